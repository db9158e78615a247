#include "cache/write_outcome.h"

namespace rbdcache::cache {

WriteOutcome write_outcome(Mode mode, bool fresh, IoResult cache, IoResult origin,
                           bool had_dirty) {
  using A = SlotAction;
  const bool cache_ok = cache == IoResult::kOk;
  const bool origin_ok = origin == IoResult::kOk;
  // Both copies failed: the slot's sub-blocks are torn; keep dirty ones.
  const A torn = had_dirty ? A::kMarkUnknown : A::kDrop;
  switch (mode) {
    case Mode::kWriteback:
      if (cache_ok) return {fresh ? A::kInsertDirty : A::kMarkDirty, true};
      if (origin_ok) return {fresh ? A::kGiveBack : A::kDrop, true};
      return {fresh ? A::kGiveBack : torn, false};
    case Mode::kWritethrough:
      if (fresh) return {cache_ok && origin_ok ? A::kInsertClean : A::kGiveBack, origin_ok};
      if (cache_ok) return {origin_ok ? A::kMarkClean : A::kMarkDirty, origin_ok};
      return {origin_ok ? A::kDrop : torn, origin_ok};
    case Mode::kPassthrough:
      if (fresh) return {A::kGiveBack, origin_ok};
      return {origin_ok ? A::kDrop : A::kNone, origin_ok};
  }
  return {A::kNone, false};
}

const char* slot_action_name(SlotAction a) {
  switch (a) {
    case SlotAction::kNone: return "none";
    case SlotAction::kInsertDirty: return "insert-dirty";
    case SlotAction::kMarkDirty: return "mark-dirty";
    case SlotAction::kInsertClean: return "insert-clean";
    case SlotAction::kMarkClean: return "mark-clean";
    case SlotAction::kGiveBack: return "give-back";
    case SlotAction::kDrop: return "drop";
    case SlotAction::kMarkUnknown: return "mark-unknown";
  }
  return "?";
}

}  // namespace rbdcache::cache
