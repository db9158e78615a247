// A client request inside the cache engine, and the pieces it is cut into.
//
// A Request lives from the moment the engine takes it until its reply: it
// holds the block locks of every origin block it touches (and their origin
// locks when it writes cached blocks to the origin) for that whole time.
// A Part is the piece of a request that falls in one origin block.
//
// Threads: a request runs on the reactor it arrived on; its callbacks run
// there too. Join is used on one reactor thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "cache/engine_stats.h"
#include "cache/mapping.h"
#include "origin/origin.h"
#include "rbdcache/types.h"

namespace rbdcache::io {
class Reactor;
}

namespace rbdcache::cache {

using StatusFn = std::function<void(Status)>;

struct Request {
  io::Reactor* r = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  OriginBlock first, last;
  IoCallback done;
  Mode mode = Mode::kWriteback;  // the mode when it arrived
  bool writes_origin = false;    // holds the origin locks too
  bool locked = false;
};

struct Part {
  OriginBlock ob;
  uint32_t s = 0;  // byte range [s, e) inside the block
  uint32_t e = 0;
  std::byte* user = nullptr;  // the part's bytes in the caller's buffer
  SubBlockRange subs() const { return touched_sub_blocks(s, e - s); }
  SubBlockRange covered() const { return covered_sub_blocks(s, e - s); }
  uint64_t origin_offset(uint32_t block_size) const { return ob.value() * block_size + s; }
  // Whole, aligned sub-blocks: the caller's buffer can be used for device I/O.
  bool direct() const;
};

// Cuts [req.offset, req.offset + req.length) into one part per origin block;
// `user` is the caller's buffer (nullptr for TRIM and WRITE_ZEROES).
std::vector<Part> split(const Request& req, std::byte* user, uint32_t block_size);

// Joins several asynchronous steps: `done` runs with the first error once
// every step has reported and the caller has released its own hold with the
// final report().
class Join : public std::enable_shared_from_this<Join> {
 public:
  static std::shared_ptr<Join> make(StatusFn done) {
    auto j = std::make_shared<Join>();
    j->done_ = std::move(done);
    return j;
  }
  void set_done(StatusFn done) { done_ = std::move(done); }
  void arm() { ++pending_; }
  void report(Status st) {
    if (!st.is_ok() && status_.is_ok()) status_ = std::move(st);
    if (--pending_ == 0) done_(status_);
  }
  // Arms the join and returns the callback that reports that step.
  StatusFn step() {
    arm();
    return [self = shared_from_this()](Status st) { self->report(std::move(st)); };
  }

 private:
  int pending_ = 1;  // the caller's hold
  Status status_;
  StatusFn done_;
};

}  // namespace rbdcache::cache
