#include "cache/writeback.h"

#include <algorithm>
#include <optional>

#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

constexpr uint32_t kSub = kSubBlockSize;
constexpr size_t kBatchBlocks = 256;

}  // namespace

void Writeback::request_full() {
  full_.store(true);
  ctx_.bg->post([this] { tick(); });
}

void Writeback::begin_flush(uint64_t max_rate_bps) {
  ctx_.slots.lock().begin_flush();
  max_rate_.store(max_rate_bps);
  // One step on the background thread: the rate limit restarts before any
  // unit of the flush can start (a tick already queued must not start one
  // against the previous flush's allowance).
  ctx_.bg->post([this] {
    rate_start_ = Clock::now();
    rate_issued_bytes_ = 0;
    full_.store(true);
    tick();
  });
}

void Writeback::end_flush() {
  // Back to the watermarks and ages: blocks dirtied during the flush are
  // not forced out.
  full_.store(false);
  ctx_.slots.lock().end_flush();
  max_rate_.store(0);
}

void Writeback::fill_stats(EngineStats& s) const {
  s.writeback_rate_bps = rate_bps_.load();
  s.origin_write_bps = origin_bps_.load();
  s.flush_max_rate_bps = max_rate_.load();
}

void Writeback::stop(std::function<void()> done) {
  stopping_ = true;
  if (batch_ && batch_->active == 0) end_batch(batch_);  // only a rate timer pending
  if (!batch_) {
    done();
    return;
  }
  stopped_ = std::move(done);
}

void Writeback::tick() {
  if (stopping_) return;
  sample_rates();
  if (batch_ || Clock::now() < backoff_until_) return;
  const bool everything = full_.load();
  bool pressure, aged;
  {
    auto t = ctx_.slots.lock();
    const double total = static_cast<double>(uint64_t{ctx_.bs} * ctx_.slots.nr_blocks());
    pressure = static_cast<double>(t.dirty_bytes()) > ctx_.opts.dirty_high_watermark * total;
    aged = t.any_dirty_before(Clock::now() - ctx_.opts.max_dirty_age);
  }
  if (pressure || aged || everything) run(everything || pressure);
}

void Writeback::run(bool everything) {
  // The next batch of dirty blocks in origin order, from the cursor on; when
  // only age triggered it, just the blocks dirty for too long.
  std::vector<DirtyBlock> batch;
  {
    auto t = ctx_.slots.lock();
    batch = t.dirty_in_origin_order(cursor_, kBatchBlocks);
    if (batch.empty() && cursor_ != OriginBlock(0)) {
      cursor_ = OriginBlock(0);
      batch = t.dirty_in_origin_order(cursor_, kBatchBlocks);
    }
    if (!everything) {
      const auto limit = Clock::now() - ctx_.opts.max_dirty_age;
      std::erase_if(batch, [&](const DirtyBlock& d) { return !t.dirty_before(d.slot, limit); });
      if (batch.empty()) {
        // Aged blocks lie before the cursor: start again from the bottom.
        for (const auto& d : t.dirty_in_origin_order(OriginBlock(0), SIZE_MAX)) {
          if (t.dirty_before(d.slot, limit)) batch.push_back(d);
          if (batch.size() >= kBatchBlocks) break;
        }
      }
    }
  }
  if (batch.empty()) {
    full_.store(false);
    return;
  }
  auto b = std::make_shared<Batch>();
  b->everything = everything;
  // Neighbouring blocks form one unit, written to the origin together.
  const uint64_t max_blocks = std::max<uint64_t>(1, ctx_.opts.writeback_max_io / ctx_.bs);
  for (const auto& d : batch) {
    if (!b->units.empty() && b->units.back().last.value() + 1 == d.origin.value() &&
        d.origin.value() - b->units.back().first.value() < max_blocks) {
      b->units.back().last = d.origin;
    } else {
      b->units.push_back(Unit{d.origin, d.origin});
    }
  }
  cursor_ = OriginBlock(batch.back().origin.value() + 1);
  batch_ = b;
  pump(b);
}

// Runs a batch's units with a small window, narrower while clients are busy.
void Writeback::pump(const std::shared_ptr<Batch>& b) {
  if (b->over || b->rate_wait) return;
  const size_t window = ctx_.fg_in_flight.load() > 0 ? 1 : 4;
  while (!stopping_ && !b->failed && b->next < b->units.size() && b->active < window) {
    const Unit& next = b->units[b->next];
    const uint64_t next_bytes = (next.last.value() - next.first.value() + 1) * uint64_t{ctx_.bs};
    if (auto delay = rate_limit_delay(next_bytes); delay.count() > 0) {
      b->rate_wait = true;
      ctx_.bg->timeout(static_cast<uint64_t>(delay.count()), [this, b](int) {
        b->rate_wait = false;
        pump(b);
      });
      return;
    }
    const Unit u = b->units[b->next++];
    ++b->active;
    write_back_unit(u, [this, b](bool ok) {
      --b->active;
      if (!ok) b->failed = true;
      pump(b);
    });
  }
  if (b->active > 0) return;
  if (b->next < b->units.size() && !b->failed && !stopping_) return;
  end_batch(b);
}

void Writeback::end_batch(const std::shared_ptr<Batch>& b) {
  b->over = true;
  batch_.reset();
  if (stopping_) {
    if (stopped_) std::exchange(stopped_, nullptr)();
    return;
  }
  if (b->failed) {
    backoff_ = std::min<std::chrono::milliseconds>(
        std::max<std::chrono::milliseconds>(backoff_ * 2, std::chrono::milliseconds(500)),
        std::chrono::milliseconds(30'000));
    backoff_until_ = Clock::now() + backoff_;
    log::warn("writeback failed; retrying in {} ms", backoff_.count());
    return;
  }
  backoff_ = std::chrono::milliseconds(0);
  // Go on while the level is above the low watermark, or until clean when a
  // full writeback was asked for.
  bool more;
  {
    auto t = ctx_.slots.lock();
    const double total = static_cast<double>(uint64_t{ctx_.bs} * ctx_.slots.nr_blocks());
    const uint64_t dirty = t.dirty_bytes();
    more = full_.load() ? dirty > 0
                        : static_cast<double>(dirty) > ctx_.opts.dirty_low_watermark * total;
  }
  if (more && (b->everything || full_.load())) {
    ctx_.bg->post([this] {
      if (!stopping_ && !batch_) run(true);
    });
  } else if (!more && full_.load()) {
    full_.store(false);
  }
}

void Writeback::write_back_unit(const Unit& unit, std::function<void(bool)> done) {
  io::Reactor& r = *ctx_.bg;
  ctx_.locks.lock_range(r, unit.first, unit.last, [this, &r, unit, done = std::move(done)] {
    // What is dirty now, block by block (the batch may be stale).
    struct Piece {
      OriginBlock ob;
      CacheBlock slot;
      SubBlockRange run;
    };
    auto pieces = std::make_shared<std::vector<Piece>>();
    {
      auto t = ctx_.slots.lock();
      for (OriginBlock b = unit.first;; ++b) {
        auto slot = t.lookup(b);
        if (slot && t.map().is_dirty(*slot)) {
          t.map().dirty_mask(*slot).without(t.unknown_mask(*slot)).for_each_run(
              [&](SubBlockRange run) { pieces->push_back(Piece{b, *slot, run}); });
        }
        if (b == unit.last) break;
      }
    }
    if (pieces->empty()) {
      ctx_.locks.unlock_range(unit.first, unit.last);
      done(true);
      return;
    }
    // Pieces that touch in origin space become one origin write.
    struct Write {
      uint64_t offset;
      uint64_t length;
      std::shared_ptr<AlignedBuffer> buf;
    };
    auto writes = std::make_shared<std::vector<Write>>();
    std::vector<std::vector<size_t>> write_pieces;
    for (size_t i = 0; i < pieces->size(); ++i) {
      const Piece& pc = (*pieces)[i];
      const uint64_t off = pc.ob.value() * ctx_.bs + uint64_t{pc.run.first} * kSub;
      const uint64_t len = uint64_t{pc.run.count} * kSub;
      if (!writes->empty() && writes->back().offset + writes->back().length == off) {
        writes->back().length += len;
        write_pieces.back().push_back(i);
      } else {
        writes->push_back(Write{off, len, nullptr});
        write_pieces.push_back({i});
      }
    }
    for (const Write& w : *writes) rate_issued_bytes_ += w.length;  // flush --max-rate

    // Step 3, origin locks held, block locks free: origin writes, origin
    // flush, then clean whatever did not change meanwhile.
    auto finish_unit = [this, unit, pieces, done](bool ok) {
      {
        auto t = ctx_.slots.lock();
        // A slot's pieces are adjacent, and its writeback ends once for all
        // of them: a second end_writeback would find none in flight and
        // report the slot changed, leaving its later runs dirty.
        std::optional<CacheBlock> ended;
        bool changed = false;
        for (const Piece& pc : *pieces) {
          if (ended != pc.slot) {
            changed = t.end_writeback(pc.slot);
            ended = pc.slot;
          }
          if (ok) t.mark_written_back(pc.slot, pc.ob, pc.run, changed);
        }
      }
      if (ok) {
        uint64_t bytes = 0;
        for (const Piece& pc : *pieces) bytes += uint64_t{pc.run.count} * kSub;
        EngineCounters::bump(ctx_.counters.bytes_written_back, bytes);
      } else {
        EngineCounters::bump(ctx_.counters.writeback_errors);
      }
      ctx_.origin_locks.unlock_range(unit.first, unit.last);
      done(ok);
    };
    auto write_out = [this, &r, unit, writes, finish_unit] {
      // The join holds the buffers until every origin write is done.
      auto join = Join::make([this, &r, unit, writes, finish_unit](Status st) {
        if (!st.is_ok()) {
          log::warn("writeback of origin blocks {}..{} failed: {}", unit.first.value(),
                    unit.last.value(), st.to_string());
          finish_unit(false);
          return;
        }
        // The origin must hold the data durably before the blocks are clean.
        ctx_.origin.flush(r, [finish_unit](Status fst) {
          if (!fst.is_ok()) log::warn("origin flush after writeback failed: {}", fst.to_string());
          finish_unit(fst.is_ok());
        });
      });
      for (const Write& w : *writes) {
        ctx_.origin.write(r, w.offset, std::as_const(*w.buf).span(), WriteFlags{}, join->step());
      }
      join->report(Status::ok());
    };

    // Step 1, block locks held: copy the dirty data out of the cache.
    auto copied = Join::make([this, &r, unit, pieces, write_out, done](Status st) {
      if (!st.is_ok()) {
        log::warn("writeback of origin blocks {}..{}: reading the cache failed: {}",
                  unit.first.value(), unit.last.value(), st.to_string());
        EngineCounters::bump(ctx_.counters.writeback_errors);
        EngineCounters::bump(ctx_.counters.cache_read_errors);
        ctx_.locks.unlock_range(unit.first, unit.last);
        done(false);
        return;
      }
      // Step 2: hand over to the origin locks.
      ctx_.origin_locks.lock_range(r, unit.first, unit.last, [this, unit, pieces, write_out] {
        {
          auto t = ctx_.slots.lock();
          for (const Piece& pc : *pieces) t.begin_writeback(pc.slot);
        }
        ctx_.locks.unlock_range(unit.first, unit.last);
        write_out();
      });
    });
    for (size_t w = 0; w < writes->size(); ++w) {
      Write& wr = (*writes)[w];
      wr.buf = std::make_shared<AlignedBuffer>(wr.length);
      uint64_t at = 0;
      for (size_t i : write_pieces[w]) {
        const Piece& pc = (*pieces)[i];
        std::span<std::byte> dst(wr.buf->data() + at, uint64_t{pc.run.count} * kSub);
        ctx_.dev.read(r, pc.slot, pc.run.first * kSub, dst, copied->step());
        at += dst.size();
      }
    }
    copied->report(Status::ok());
  });
}

std::chrono::nanoseconds Writeback::rate_limit_delay(uint64_t next_bytes) {
  const uint64_t rate = max_rate_.load();
  if (rate == 0) return std::chrono::nanoseconds(0);
  // A token bucket holding one unit's worth of burst: the next unit may
  // start once the bytes issued so far plus its own (an upper bound: its
  // whole origin range) fit in rate x elapsed + burst. Bytes are counted
  // when issued, not when completed, as several units run at once; so a
  // flush of N bytes takes at least (N - burst) / rate.
  const double burst = static_cast<double>(ctx_.opts.writeback_max_io);
  const double want = static_cast<double>(rate_issued_bytes_ + next_bytes);
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - rate_start_).count();
  const double ahead_s = (want - burst) / static_cast<double>(rate) - elapsed_s;
  if (ahead_s <= 0) return std::chrono::nanoseconds(0);
  // Short waits, so that shutdown is never held up for long.
  return std::chrono::nanoseconds(static_cast<int64_t>(std::clamp(ahead_s, 0.001, 0.1) * 1e9));
}

void Writeback::sample_rates() {
  const auto now = Clock::now();
  if (sample_at_ == Clock::time_point{}) {
    sample_at_ = now;
    return;
  }
  const double dt = std::chrono::duration<double>(now - sample_at_).count();
  if (dt < 1.0) {
    sample_active_ = sample_active_ || batch_ != nullptr;
    return;
  }
  const uint64_t bytes = ctx_.counters.bytes_written_back.load();
  const double rate = static_cast<double>(bytes - sample_bytes_) / dt;
  // Smoothed over a few seconds.
  const double old = rate_bps_.load();
  rate_bps_.store(old == 0 ? rate : 0.5 * old + 0.5 * rate);
  if (sample_active_ && rate > 0) {
    const double o = origin_bps_.load();
    origin_bps_.store(o == 0 ? rate : 0.7 * o + 0.3 * rate);
  }
  sample_bytes_ = bytes;
  sample_at_ = now;
  sample_active_ = batch_ != nullptr;
}

}  // namespace rbdcache::cache
