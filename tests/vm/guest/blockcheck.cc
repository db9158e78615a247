// blockcheck: the test guests' disk workload (tests/vm). Built static, so
// that it runs in a busybox initramfs with no other files.
//
//   blockcheck write DEV run=ID [blocks=N] [batch=B] [seconds=S] [verify_every=K]
//   blockcheck verify DEV run=ID synced=N [blocks=N]
//
// write: O_DIRECT writes of 4 KiB test blocks (block_format.h), write seq
//   1, 2, 3, ... to block block_of(run, seq). After every B writes (default
//   32) it calls fdatasync and prints "blockcheck: SYNCED seq=N": every
//   write up to seq N is then on stable storage. Every K batches (default
//   0: never) it re-reads the whole area and checks that each block holds
//   exactly the last write it was given (all zeroes if none): a "VERIFY
//   round=R PASS|FAIL" line. It stops after S seconds (default 0: never),
//   with a final check, or at the first failure. The area must be zeroes
//   when the run starts (a fresh image).
// verify: after a crash, with N the last seq the writer reported synced:
//   each block must hold the last write up to N meant for it, or a later
//   write of the run meant for it (written, not yet synced), or zeroes if
//   no write up to N was meant for it. Any other content (a stale block, a
//   torn or foreign one) is a failure.
//
// Each mode ends with one line "blockcheck: PASS ..." or "blockcheck: FAIL
// ..." and exits 0 or 1 (2 for a usage or I/O error).
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "block_format.h"

namespace {

using blockcheck::BlockState;
using blockcheck::kBlockSize;

constexpr std::uint64_t kChunkBlocks = 64;  // blocks per read when checking

struct Options {
  std::string mode, dev;
  std::uint64_t run = 0, blocks = 0, batch = 32, seconds = 0, verify_every = 0, synced = 0;
  bool have_run = false, have_synced = false;
};

void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void say(const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  std::string out = std::string("blockcheck: ") + line + "\n";
  // One write per line, so that lines of a killed guest are never mixed.
  if (::write(1, out.data(), out.size()) < 0) {
    // Nothing to report to: the console is gone.
  }
}

[[noreturn]] void die(int rc, const char* what) {
  say("FAIL %s: %s", what, std::strerror(errno));
  std::exit(rc);
}

double now_s() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

bool parse(int argc, char** argv, Options* o) {
  if (argc < 3) return false;
  o->mode = argv[1];
  o->dev = argv[2];
  for (int i = 3; i < argc; ++i) {
    const char* eq = std::strchr(argv[i], '=');
    if (eq == nullptr) return false;
    const std::string key(argv[i], static_cast<std::size_t>(eq - argv[i]));
    char* end = nullptr;
    const std::uint64_t v = std::strtoull(eq + 1, &end, 0);
    if (*end != '\0') return false;
    if (key == "run") { o->run = v; o->have_run = true; }
    else if (key == "blocks") o->blocks = v;
    else if (key == "batch") o->batch = v;
    else if (key == "seconds") o->seconds = v;
    else if (key == "verify_every") o->verify_every = v;
    else if (key == "synced") { o->synced = v; o->have_synced = true; }
    else return false;
  }
  if (!o->have_run || o->batch == 0) return false;
  if (o->mode == "verify") return o->have_synced;
  return o->mode == "write";
}

unsigned char* aligned_buffer(std::size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, kBlockSize, bytes) != 0) die(2, "posix_memalign");
  return static_cast<unsigned char*>(p);
}

// Reads block `b` onwards, up to kChunkBlocks blocks, into `buf`; returns
// how many blocks it read.
std::uint64_t read_chunk(int fd, std::uint64_t b, std::uint64_t nblocks, unsigned char* buf) {
  const std::uint64_t n = nblocks - b < kChunkBlocks ? nblocks - b : kChunkBlocks;
  const ssize_t want = static_cast<ssize_t>(n * kBlockSize);
  const ssize_t got = ::pread(fd, buf, static_cast<std::size_t>(want), static_cast<off_t>(b * kBlockSize));
  if (got != want) {
    if (got >= 0) errno = EIO;
    die(2, "read");
  }
  return n;
}

// The live check of write mode: block b must hold exactly write last[b].
bool check_exact(int fd, std::uint64_t run, const std::vector<std::uint64_t>& last, unsigned char* buf,
                 unsigned char* scratch, std::uint64_t round) {
  const std::uint64_t nblocks = last.size();
  std::uint64_t bad = 0, written = 0;
  for (std::uint64_t b = 0; b < nblocks;) {
    const std::uint64_t n = read_chunk(fd, b, nblocks, buf);
    for (std::uint64_t i = 0; i < n; ++i, ++b) {
      std::uint64_t seq = 0;
      const BlockState st = blockcheck::check_block(buf + i * kBlockSize, run, b, nblocks, scratch, &seq);
      const std::uint64_t want = last[b];
      if (want != 0) ++written;
      const bool ok = want == 0 ? st == BlockState::kZero : st == BlockState::kValid && seq == want;
      if (ok) continue;
      if (++bad <= 5) {
        say("VERIFY round=%" PRIu64 " block %" PRIu64 ": holds %s seq=%" PRIu64 ", expected seq=%" PRIu64, round,
            b, st == BlockState::kZero ? "zeroes" : st == BlockState::kValid ? "a write of" : "garbage, or",
            st == BlockState::kValid ? seq : 0, want);
      }
    }
  }
  say("VERIFY round=%" PRIu64 " %s blocks=%" PRIu64 " written=%" PRIu64 " bad=%" PRIu64, round,
      bad == 0 ? "PASS" : "FAIL", nblocks, written, bad);
  return bad == 0;
}

int run_write(int fd, const Options& o, std::uint64_t nblocks) {
  std::vector<std::uint64_t> last(nblocks, 0);
  unsigned char* blk = aligned_buffer(kBlockSize);
  unsigned char* scratch = aligned_buffer(kBlockSize);
  unsigned char* buf = aligned_buffer(kChunkBlocks * kBlockSize);
  const double start = now_s();
  std::uint64_t seq = 0, batches = 0, rounds = 0;
  say("START write run=%" PRIu64 " blocks=%" PRIu64 " batch=%" PRIu64, o.run, nblocks, o.batch);
  for (;;) {
    for (std::uint64_t i = 0; i < o.batch; ++i) {
      ++seq;
      const std::uint64_t b = blockcheck::block_of(o.run, seq, nblocks);
      blockcheck::make_block(blk, o.run, b, seq);
      if (::pwrite(fd, blk, kBlockSize, static_cast<off_t>(b * kBlockSize)) != static_cast<ssize_t>(kBlockSize)) {
        die(2, "write");
      }
      last[b] = seq;
    }
    if (::fdatasync(fd) != 0) die(2, "fdatasync");
    ++batches;
    say("SYNCED seq=%" PRIu64, seq);
    const bool done = o.seconds != 0 && now_s() - start >= static_cast<double>(o.seconds);
    if (done || (o.verify_every != 0 && batches % o.verify_every == 0)) {
      if (!check_exact(fd, o.run, last, buf, scratch, ++rounds)) {
        say("FAIL write: round %" PRIu64 " read back a block other than its last write (seq=%" PRIu64 ")", rounds,
            seq);
        return 1;
      }
    }
    if (done) break;
  }
  say("PASS write run=%" PRIu64 " seq=%" PRIu64 " rounds=%" PRIu64 " seconds=%.1f", o.run, seq, rounds,
      now_s() - start);
  return 0;
}

int run_verify(int fd, const Options& o, std::uint64_t nblocks) {
  // The oldest write each block may hold: the last write up to `synced`.
  std::vector<std::uint64_t> min_seq(nblocks, 0);
  for (std::uint64_t s = 1; s <= o.synced; ++s) min_seq[blockcheck::block_of(o.run, s, nblocks)] = s;
  unsigned char* scratch = aligned_buffer(kBlockSize);
  unsigned char* buf = aligned_buffer(kChunkBlocks * kBlockSize);
  std::uint64_t zero = 0, synced = 0, newer = 0, stale = 0, lost = 0, garbage = 0, max_seq = 0;
  for (std::uint64_t b = 0; b < nblocks;) {
    const std::uint64_t n = read_chunk(fd, b, nblocks, buf);
    for (std::uint64_t i = 0; i < n; ++i, ++b) {
      std::uint64_t seq = 0;
      const BlockState st = blockcheck::check_block(buf + i * kBlockSize, o.run, b, nblocks, scratch, &seq);
      const std::uint64_t want = min_seq[b];
      const char* why = nullptr;
      if (st == BlockState::kGarbage) {
        ++garbage;
        why = "garbage (torn, foreign or corrupt)";
      } else if (st == BlockState::kZero) {
        ++zero;
        if (want != 0) { ++lost; why = "zeroes"; }
      } else {
        if (seq > max_seq) max_seq = seq;
        if (seq < want) { ++stale; why = "an older write"; }
        else if (seq > o.synced) ++newer;
        else ++synced;
      }
      if (why != nullptr && garbage + stale + lost <= 5) {
        say("block %" PRIu64 ": holds %s (seq=%" PRIu64 "), needs seq>=%" PRIu64, b, why, seq, want);
      }
    }
  }
  const bool ok = garbage == 0 && stale == 0 && lost == 0;
  say("%s verify run=%" PRIu64 " synced=%" PRIu64 " blocks=%" PRIu64 " zero=%" PRIu64 " synced_ok=%" PRIu64
      " newer=%" PRIu64 " stale=%" PRIu64 " lost=%" PRIu64 " garbage=%" PRIu64 " max_seq=%" PRIu64,
      ok ? "PASS" : "FAIL", o.run, o.synced, nblocks, zero, synced, newer, stale, lost, garbage, max_seq);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) {
    std::fprintf(stderr,
                 "usage: blockcheck write DEV run=ID [blocks=N] [batch=B] [seconds=S] [verify_every=K]\n"
                 "       blockcheck verify DEV run=ID synced=N [blocks=N]\n");
    return 2;
  }
  const int flags = (o.mode == "write" ? O_RDWR : O_RDONLY) | O_DIRECT;
  const int fd = ::open(o.dev.c_str(), flags);
  if (fd < 0) die(2, o.dev.c_str());
  std::uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) die(2, "BLKGETSIZE64");
  std::uint64_t nblocks = bytes / kBlockSize;
  if (o.blocks != 0) {
    if (o.blocks > nblocks) {
      errno = ENOSPC;
      die(2, "blocks= is larger than the device");
    }
    nblocks = o.blocks;
  }
  if (nblocks == 0) {
    errno = ENOSPC;
    die(2, "device");
  }
  return o.mode == "write" ? run_write(fd, o, nblocks) : run_verify(fd, o, nblocks);
}
