// The on-disk format of blockcheck's test blocks (tests/vm/guest).
//
// Every test block is 4096 bytes, all fields little-endian (the guest is
// x86-64; blocks are only ever read back by the same program):
//
//   offset  size  field
//        0     8  magic     "BLKCHK01"
//        8     8  run       the run's id (the kernel command line gives it)
//       16     8  block     the block's own number (where it must be read)
//       24     8  seq       the write's sequence number in the run (1, 2, ...)
//       32  4056  payload   a pseudo-random stream seeded by (run, block, seq)
//     4088     8  check     FNV-1a 64 of bytes 0..4087
//
// So a block read back is either all zeroes (never written), or names the
// one write that produced it, and every byte of it can be recomputed: a
// torn write (sectors of two writes), a block written at the wrong place or
// any other garbage fails check_block.
//
// Which block write `seq` of run `run` goes to is fixed too (block_of), so
// a verifier that knows only the run and the last synced seq can compute
// which write each block must hold at least.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace blockcheck {

inline constexpr std::size_t kBlockSize = 4096;
inline constexpr std::uint64_t kMagic = 0x31304b48434b4c42ULL;  // "BLKCHK01"
inline constexpr std::size_t kPayloadOffset = 32;
inline constexpr std::size_t kCheckOffset = kBlockSize - 8;

inline std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The block that write `seq` of run `run` goes to, in [0, nblocks).
inline std::uint64_t block_of(std::uint64_t run, std::uint64_t seq, std::uint64_t nblocks) {
  return mix64(run ^ mix64(seq)) % nblocks;
}

inline std::uint64_t fnv1a64(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

inline std::uint64_t get64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void put64(unsigned char* p, std::uint64_t v) { std::memcpy(p, &v, 8); }

// Fills `out` (kBlockSize bytes) with write `seq` of run `run` to `block`.
inline void make_block(unsigned char* out, std::uint64_t run, std::uint64_t block, std::uint64_t seq) {
  put64(out, kMagic);
  put64(out + 8, run);
  put64(out + 16, block);
  put64(out + 24, seq);
  std::uint64_t s = mix64(run ^ mix64(block ^ mix64(seq)));
  for (std::size_t off = kPayloadOffset; off < kCheckOffset; off += 8) {
    s = mix64(s);
    put64(out + off, s);
  }
  put64(out + kCheckOffset, fnv1a64(out, kCheckOffset));
}

enum class BlockState { kZero, kValid, kGarbage };

// What a block read back at `block` holds; `seq` gets the write's seq when
// it is kValid. kValid means: every byte is the write of this run it names,
// at this place, and that write was meant for this block. `scratch` is
// kBlockSize bytes of work space.
inline BlockState check_block(const unsigned char* in, std::uint64_t run, std::uint64_t block,
                              std::uint64_t nblocks, unsigned char* scratch, std::uint64_t* seq) {
  bool zero = true;
  for (std::size_t i = 0; i < kBlockSize && zero; i += 8) zero = get64(in + i) == 0;
  if (zero) return BlockState::kZero;
  if (get64(in) != kMagic || get64(in + 8) != run || get64(in + 16) != block) return BlockState::kGarbage;
  const std::uint64_t s = get64(in + 24);
  if (s == 0 || block_of(run, s, nblocks) != block) return BlockState::kGarbage;
  if (get64(in + kCheckOffset) != fnv1a64(in, kCheckOffset)) return BlockState::kGarbage;
  make_block(scratch, run, block, s);
  if (std::memcmp(in, scratch, kBlockSize) != 0) return BlockState::kGarbage;
  *seq = s;
  return BlockState::kValid;
}

}  // namespace blockcheck
