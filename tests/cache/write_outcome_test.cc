// The outcome table of a client write (cache/write_outcome.h), row by row.
#include "cache/write_outcome.h"

#include <gtest/gtest.h>

namespace rbdcache::cache {
namespace {

using A = SlotAction;
using R = IoResult;

struct Row {
  Mode mode;
  bool fresh;
  R cache;
  R origin;
  bool had_dirty;
  A action;
  bool ok;
};

const char* name(Mode m) { return mode_name(m); }

TEST(WriteOutcome, EveryRowOfTheTable) {
  const Row rows[] = {
      {Mode::kWriteback, true, R::kOk, R::kNotTried, false, A::kInsertDirty, true},
      {Mode::kWriteback, false, R::kOk, R::kNotTried, true, A::kMarkDirty, true},
      {Mode::kWriteback, true, R::kFailed, R::kOk, false, A::kGiveBack, true},
      {Mode::kWriteback, false, R::kFailed, R::kOk, true, A::kDrop, true},
      {Mode::kWriteback, true, R::kFailed, R::kFailed, false, A::kGiveBack, false},
      {Mode::kWriteback, false, R::kFailed, R::kFailed, false, A::kDrop, false},
      {Mode::kWriteback, false, R::kFailed, R::kFailed, true, A::kMarkUnknown, false},
      {Mode::kWritethrough, true, R::kOk, R::kOk, false, A::kInsertClean, true},
      {Mode::kWritethrough, true, R::kFailed, R::kOk, false, A::kGiveBack, true},
      {Mode::kWritethrough, true, R::kOk, R::kFailed, false, A::kGiveBack, false},
      {Mode::kWritethrough, false, R::kOk, R::kOk, true, A::kMarkClean, true},
      {Mode::kWritethrough, false, R::kFailed, R::kOk, true, A::kDrop, true},
      {Mode::kWritethrough, false, R::kOk, R::kFailed, false, A::kMarkDirty, false},
      {Mode::kWritethrough, false, R::kFailed, R::kFailed, false, A::kDrop, false},
      {Mode::kWritethrough, false, R::kFailed, R::kFailed, true, A::kMarkUnknown, false},
      {Mode::kPassthrough, false, R::kNotTried, R::kOk, true, A::kDrop, true},
      {Mode::kPassthrough, false, R::kNotTried, R::kFailed, true, A::kNone, false},
  };
  for (const Row& r : rows) {
    WriteOutcome o = write_outcome(r.mode, r.fresh, r.cache, r.origin, r.had_dirty);
    EXPECT_EQ(o.action, r.action) << name(r.mode) << " fresh=" << r.fresh << " cache="
                                  << static_cast<int>(r.cache) << " origin="
                                  << static_cast<int>(r.origin) << ": got "
                                  << slot_action_name(o.action);
    EXPECT_EQ(o.ok, r.ok) << name(r.mode) << " fresh=" << r.fresh;
  }
}

// Whatever happened, an acknowledged write's data is somewhere readable,
// and a failed write never leaves dirty data silently dropped.
TEST(WriteOutcome, NoCombinationDropsDirtyDataThatExistsNowhereElse) {
  for (Mode m : {Mode::kWriteback, Mode::kWritethrough, Mode::kPassthrough}) {
    for (R cache : {R::kNotTried, R::kOk, R::kFailed}) {
      for (R origin : {R::kNotTried, R::kOk, R::kFailed}) {
        WriteOutcome o = write_outcome(m, false, cache, origin, true);
        if (o.action == A::kDrop) {
          EXPECT_EQ(origin, R::kOk) << mode_name(m) << ": dropped dirty data the origin lacks";
        }
        if (o.ok) {
          EXPECT_TRUE(cache == R::kOk || origin == R::kOk) << mode_name(m);
        }
      }
    }
  }
}

}  // namespace
}  // namespace rbdcache::cache
