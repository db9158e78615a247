// What a client write does to its cache slot once its I/O has finished: a
// pure function of how the cache and origin writes went, so that every
// combination is spelled out in one table and tested on its own
// (tests/cache/write_outcome_test.cc).
//
//   mode          fresh  cache   origin  had dirty | slot action    reply
//   writeback     yes    ok      -       -         | insert dirty   ok
//   writeback     no     ok      -       -         | mark dirty     ok
//   writeback     yes    failed  ok      -         | give back      ok
//   writeback     no     failed  ok      -         | drop           ok
//   writeback     yes    failed  failed  -         | give back      EIO
//   writeback     no     failed  failed  no        | drop           EIO
//   writeback     no     failed  failed  yes       | mark unknown   EIO
//   writethrough  yes    ok      ok      -         | insert clean   ok
//   writethrough  yes    any other               - | give back      origin's
//   writethrough  no     ok      ok      -         | mark clean     ok
//   writethrough  no     failed  ok      -         | drop           ok
//   writethrough  no     ok      failed  -         | mark dirty     EIO
//   writethrough  no     failed  failed  no        | drop           EIO
//   writethrough  no     failed  failed  yes       | mark unknown   EIO
//   passthrough   no     -       ok      -         | drop           ok
//   passthrough   no     -       failed  -         | none           EIO
//
// In writeback mode the origin is written only when the cache write failed
// (the merged sub-blocks go to the origin instead: the request neither
// fails nor loses the older dirty data it merged). "Mark unknown" keeps
// dirty sub-blocks whose cache copy may be torn and that exist nowhere else:
// they fail reads until rewritten, rather than serve unvouched data or
// silently fall back to older origin data.
#pragma once

#include "cache/engine_stats.h"

namespace rbdcache::cache {

enum class IoResult { kNotTried, kOk, kFailed };

enum class SlotAction {
  kNone,
  kInsertDirty,   // map the fresh slot; the sub-blocks are dirty
  kMarkDirty,     // the sub-blocks are dirty
  kInsertClean,   // map the fresh slot; the sub-blocks are valid and clean
  kMarkClean,     // the sub-blocks are valid and clean
  kGiveBack,      // return the fresh slot unused
  kDrop,          // the sub-blocks are no longer cached
  kMarkUnknown,   // the sub-blocks stay dirty but unreadable
};

struct WriteOutcome {
  SlotAction action = SlotAction::kNone;
  bool ok = false;  // reply success
  bool operator==(const WriteOutcome&) const = default;
};

// `fresh`: the slot was reserved for this write (not mapped before).
// `had_dirty`: the sub-blocks written held dirty data before the write.
WriteOutcome write_outcome(Mode mode, bool fresh, IoResult cache, IoResult origin,
                           bool had_dirty);

const char* slot_action_name(SlotAction a);

}  // namespace rbdcache::cache
