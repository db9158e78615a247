#include "metalog/entry.h"

#include <bit>
#include <cstring>

namespace rbdcache::metalog {

namespace {

// The modifier bits that describe how the masks of `e` are encoded.
uint8_t modifiers(const Entry& e, uint32_t sub_blocks) {
  uint8_t mods = 0;
  if (e.op == EntryOp::kMap && e.valid == SubBlockMask::first(sub_blocks)) mods |= kModValidAll;
  if (e.op == EntryOp::kMap || e.op == EntryOp::kSetDirty) {
    if (e.dirty.none()) {
      mods |= kModDirtyNone;
    } else if (e.op == EntryOp::kMap && e.dirty == e.valid) {
      mods |= kModDirtyValid;
    }
  }
  return mods;
}

template <typename T>
void put(std::vector<std::byte>& out, T v) {
  std::byte b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

}  // namespace

size_t encoded_size(const Entry& e, uint32_t sub_blocks) {
  uint8_t mods = modifiers(e, sub_blocks);
  size_t mb = mask_bytes(sub_blocks);
  switch (e.op) {
    case EntryOp::kMap:
      return 1 + 4 + 8 + ((mods & kModValidAll) ? 0 : mb) +
             ((mods & (kModDirtyNone | kModDirtyValid)) ? 0 : mb);
    case EntryOp::kUnmap:
      return 1 + 4;
    case EntryOp::kSetDirty:
      return 1 + 4 + ((mods & kModDirtyNone) ? 0 : mb);
    case EntryOp::kCheckpointBegin:
      return 1;
    case EntryOp::kCheckpointEnd:
      return 1 + 8;
  }
  return 0;
}

void encode_entry(const Entry& e, uint32_t sub_blocks, std::vector<std::byte>& out) {
  uint8_t mods = modifiers(e, sub_blocks);
  size_t mb = mask_bytes(sub_blocks);
  out.push_back(static_cast<std::byte>(static_cast<uint8_t>(e.op) | mods));
  auto put_mask = [&](const SubBlockMask& m) {
    size_t at = out.size();
    out.resize(at + mb);
    m.to_bytes(std::span(out).subspan(at, mb));
  };
  switch (e.op) {
    case EntryOp::kMap:
      put<uint32_t>(out, e.cache.value());
      put<uint64_t>(out, e.origin.value());
      if (!(mods & kModValidAll)) put_mask(e.valid);
      if (!(mods & (kModDirtyNone | kModDirtyValid))) put_mask(e.dirty);
      break;
    case EntryOp::kUnmap:
      put<uint32_t>(out, e.cache.value());
      break;
    case EntryOp::kSetDirty:
      put<uint32_t>(out, e.cache.value());
      if (!(mods & kModDirtyNone)) put_mask(e.dirty);
      break;
    case EntryOp::kCheckpointBegin:
      break;
    case EntryOp::kCheckpointEnd:
      put<uint64_t>(out, e.checkpoint_start);
      break;
  }
}

Status decode_entries(std::span<const std::byte> payload, uint32_t count, uint32_t sub_blocks,
                      std::vector<Entry>& out) {
  size_t pos = 0;
  const size_t mb = mask_bytes(sub_blocks);
  const SubBlockMask all = SubBlockMask::first(sub_blocks);
  for (uint32_t i = 0; i < count; ++i) {
    auto fail = [&](std::string_view what) {
      return Status::corruption(fmt::format("entry {} at payload offset {}: {}", i, pos, what));
    };
    auto need = [&](size_t n) { return payload.size() - pos >= n; };
    if (!need(1)) return fail("truncated");
    uint8_t opb = static_cast<uint8_t>(payload[pos]);
    uint8_t op = opb & kOpMask;
    uint8_t mods = opb & ~kOpMask;
    if (mods & kModReserved) return fail("reserved op bit set");
    if ((mods & kModDirtyNone) && (mods & kModDirtyValid)) return fail("conflicting dirty modifiers");
    size_t start = pos;
    ++pos;
    auto get32 = [&] {
      uint32_t v;
      std::memcpy(&v, payload.data() + pos, 4);
      pos += 4;
      return v;
    };
    auto get64 = [&] {
      uint64_t v;
      std::memcpy(&v, payload.data() + pos, 8);
      pos += 8;
      return v;
    };
    auto get_mask = [&] {
      SubBlockMask m = SubBlockMask::from_bytes(payload.subspan(pos, mb));
      pos += mb;
      return m;
    };
    Entry e;
    switch (op) {
      case kOpMap: {
        size_t n = 4 + 8 + ((mods & kModValidAll) ? 0 : mb) +
                   ((mods & (kModDirtyNone | kModDirtyValid)) ? 0 : mb);
        if (!need(n)) return fail("truncated map entry");
        e.op = EntryOp::kMap;
        e.cache = CacheBlock(get32());
        e.origin = OriginBlock(get64());
        e.valid = (mods & kModValidAll) ? all : get_mask();
        if (mods & kModDirtyNone) {
          e.dirty = SubBlockMask();
        } else if (mods & kModDirtyValid) {
          e.dirty = e.valid;
        } else {
          e.dirty = get_mask();
        }
        if (!e.valid.fits(sub_blocks) || !e.dirty.fits(sub_blocks)) return fail("mask bit past the last sub-block");
        if (!e.dirty.is_subset_of(e.valid)) return fail("dirty sub-block that is not valid");
        break;
      }
      case kOpUnmap:
        if (mods != 0) return fail("modifier on unmap entry");
        if (!need(4)) return fail("truncated unmap entry");
        e = Entry::unmap(CacheBlock(get32()));
        break;
      case kOpSetDirty: {
        if (mods & (kModValidAll | kModDirtyValid)) return fail("bad modifier on dirty entry");
        size_t n = 4 + ((mods & kModDirtyNone) ? 0 : mb);
        if (!need(n)) return fail("truncated dirty entry");
        e.op = EntryOp::kSetDirty;
        e.cache = CacheBlock(get32());
        e.dirty = (mods & kModDirtyNone) ? SubBlockMask() : get_mask();
        if (!e.dirty.fits(sub_blocks)) return fail("mask bit past the last sub-block");
        break;
      }
      case kOpCkptBegin:
        if (mods != 0) return fail("modifier on checkpoint entry");
        e.op = EntryOp::kCheckpointBegin;
        break;
      case kOpCkptEnd:
        if (mods != 0) return fail("modifier on checkpoint entry");
        if (!need(8)) return fail("truncated checkpoint entry");
        e.op = EntryOp::kCheckpointEnd;
        e.checkpoint_start = get64();
        break;
      default:
        pos = start;
        return fail(fmt::format("unknown op {}", op));
    }
    out.push_back(e);
  }
  if (pos != payload.size()) {
    return Status::corruption(
        fmt::format("{} trailing payload bytes after {} entries", payload.size() - pos, count));
  }
  return Status::ok();
}

}  // namespace rbdcache::metalog
