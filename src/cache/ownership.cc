#include "cache/ownership.h"

#include <unistd.h>

#include <ctime>

#include <fmt/format.h>

#include "util/log.h"

namespace rbdcache::cache {

namespace {

constexpr const char* kPrefix = "rbdcache.";

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// EEXIST: `rec`, another cache, may hold writes the image lacks.
Status others_dirty_refusal(SharedImage& image, const ImageCacheRecord& rec) {
  auto holder = image.lock_holder();
  std::string lock = holder.is_ok() && !holder->empty()
                         ? fmt::format("RBD image is locked by {}; ", holder.value())
                         : std::string();
  return Status::from_errno(EEXIST, fmt::format(
      "{}{} recorded at {} that it may hold writes this image does not have yet (state "
      "dirty, epoch {}). Run 'rbdcache flush' there first. If that cache is lost for good, "
      "--force attaches anyway: its unflushed writes are then lost, and it must never be "
      "attached to this image again without --force",
      lock, rec.who(), rec.updated.empty() ? "an unknown time" : rec.updated, rec.epoch));
}

}  // namespace

std::string ImageCacheRecord::who() const {
  return fmt::format("cache {} on host {} (pid {})", cache, host.empty() ? "?" : host,
                     pid.empty() ? "?" : pid);
}

std::string CacheOwnership::snapshot_name(const metalog::Uuid& cache) {
  return std::string(kPrefix) + cache.to_string();
}

Result<ImageCacheRecord> CacheOwnership::read_record(SharedImage& image) {
  auto kv = image.metadata(kPrefix);
  if (!kv.is_ok()) return kv.status();
  ImageCacheRecord r;
  auto get = [&](const char* k) {
    auto it = kv->find(std::string(kPrefix) + k);
    return it == kv->end() ? std::string() : it->second;
  };
  r.cache = get("cache");
  r.host = get("host");
  r.pid = get("pid");
  r.state = get("state");
  r.updated = get("updated");
  try {
    r.epoch = get("epoch").empty() ? 0 : std::stoull(get("epoch"));
  } catch (const std::exception&) {
    r.epoch = 0;
  }
  return r;
}

Result<std::unique_ptr<CacheOwnership>> CacheOwnership::attach(SharedImage& image,
                                                               const metalog::Superblock& sb,
                                                               uint64_t valid_blocks,
                                                               uint64_t dirty_blocks,
                                                               Options opts, AttachPlan& plan) {
  const std::string uuid = sb.uuid.to_string();
  auto rec = read_record(image);
  if (!rec.is_ok()) return rec.status();

  // 1. Another cache's dirty data. Checked before taking the lock, which
  // can take up to the OSDs' watch timeout (30 s) when its holder died.
  // A cache that takes no lock (passthrough or writethrough, nothing dirty
  // here) may attach beside it: it writes only to the image, like any
  // cooperating librbd client, and leaves the other cache's record alone.
  const bool takes_lock = opts.mode == Mode::kWriteback || dirty_blocks > 0;
  const bool others_dirty = rec->present() && rec->cache != uuid && rec->state == "dirty";
  if (others_dirty && !opts.force && takes_lock) return others_dirty_refusal(image, *rec);
  const bool beside = others_dirty && !opts.force;
  if (beside) {
    log::info("{} may hold writes this image does not have yet (state dirty); attaching in {} "
              "mode beside it, taking no lock and leaving its record in the image",
              rec->who(), mode_name(opts.mode));
  }

  // 2. The lock: nothing below may race another writer.
  if (takes_lock) {
    Status st = image.acquire_exclusive_lock();
    if (!st.is_ok()) {
      if (st.err() == EBUSY && rec->present() && rec->cache != uuid) {
        return Status::from_errno(EBUSY, fmt::format("{}; the image's last rbdcache is {}",
                                                     st.message(), rec->who()));
      }
      return st;
    }
  }
  if (others_dirty) {
    log::warn("--force: IGNORING {}, which may hold unflushed writes to this image; those "
              "writes are lost if it never flushes, and overwrite newer data if it does",
              rec->who());
  }
  if (dirty_blocks > 0 && rec->present() && rec->cache != uuid && rec->epoch > sb.cache_epoch) {
    if (!opts.force) {
      return Status::from_errno(EEXIST, fmt::format(
          "this cache holds {} dirty blocks for the image, but {} has used the image since "
          "(epoch {} > this cache's {}); writing them back could overwrite newer data. "
          "--force writes them back anyway",
          dirty_blocks, rec->who(), rec->epoch, sb.cache_epoch));
    }
    log::warn("--force: writing back {} dirty blocks although {} has used the image since; "
              "they overwrite whatever it wrote to the same places",
              dirty_blocks, rec->who());
  }

  auto own = std::unique_ptr<CacheOwnership>(new CacheOwnership(
      image, uuid, opts.host, std::max(rec->epoch, sb.cache_epoch) + 1));
  own->claimed_ = takes_lock;
  own->beside_ = beside;
  own->force_ = opts.force;
  own->snapshot_ = snapshot_name(sb.uuid);

  // 3. Stale clean blocks: what changed since this cache let go of the image.
  // Without the lock the image may change on: the snapshot stays as the
  // anchor, and taking the lock diffs again (stale_since_anchor()).
  own->coherent_ = takes_lock;
  auto exists = image.snapshot_exists(own->snapshot_);
  if (!exists.is_ok()) return exists.status();
  if (*exists) {
    own->remove_snapshot_ = takes_lock;
    own->anchor_ = !takes_lock;
    if (valid_blocks > 0) {
      auto changed = image.changed_since(own->snapshot_);
      if (!changed.is_ok()) return changed.status();
      if (!changed->empty()) {
        uint64_t bytes = 0;
        for (const auto& e : *changed) bytes += e.length;
        plan.drop_clean = std::move(changed).value();
        plan.reason = fmt::format("{} bytes of the image were written elsewhere since this "
                                  "cache detached", bytes);
      }
    }
  } else if (valid_blocks > dirty_blocks) {
    plan.drop_clean = std::vector<ByteExtent>{};
    plan.reason = "the cache was not detached cleanly last time (no snapshot "
                  "'" + own->snapshot_ + "'), so the image may have changed behind it";
  }
  plan.new_epoch = own->epoch_;

  // 4. Record this cache.
  Status st = own->record_state(opts.mode, dirty_blocks);
  if (!st.is_ok()) return st;
  return own;
}

void CacheOwnership::attached() {
  if (!remove_snapshot_) return;
  Status st = image_.remove_snapshot(snapshot_);
  if (!st.is_ok()) log::warn("{}", st.to_string());
  remove_snapshot_ = false;
}

Status CacheOwnership::record_state(Mode mode, uint64_t dirty) {
  const bool clean = dirty == 0 && mode != Mode::kWriteback;
  // Beside another cache's dirty record, without the lock: that record is
  // the one that matters, and stays.
  if (beside_ && !claimed_) return Status::ok();
  return image_.set_metadata({
      {std::string(kPrefix) + "cache", uuid_},
      {std::string(kPrefix) + "host", host_},
      {std::string(kPrefix) + "pid", std::to_string(getpid())},
      {std::string(kPrefix) + "epoch", std::to_string(epoch_)},
      {std::string(kPrefix) + "state", clean ? "clean" : "dirty"},
      {std::string(kPrefix) + "updated", utc_now()},
  });
}

Status CacheOwnership::ensure_lock() {
  if (holds_lock()) return Status::ok();
  // The same rule as at attach: never claim an image that another cache
  // may hold unflushed writes for (it may have stopped since, lock free).
  auto rec = read_record(image_);
  if (!rec.is_ok()) return rec.status();
  if (rec->present() && rec->cache != uuid_ && rec->state == "dirty" && !force_) {
    return others_dirty_refusal(image_, *rec);
  }
  RBDCACHE_RETURN_IF_ERROR(image_.acquire_exclusive_lock());
  claimed_ = true;
  beside_ = false;
  return Status::ok();
}

Status CacheOwnership::release(Mode mode, uint64_t dirty_bytes,
                               const std::function<void()>& stop_clean_hits) {
  if (mode == Mode::kWriteback || dirty_bytes > 0) {
    return Status::from_errno(EBUSY, fmt::format(
        "cannot release the image: {} bytes are dirty and the mode is {}; run "
        "'rbdcache flush --wait --then passthrough' first", dirty_bytes, mode_name(mode)));
  }
  RBDCACHE_RETURN_IF_ERROR(record_state(mode, 0));
  if (coherent_ && holds_lock()) {
    // The cache is current now, under the lock: the anchor for next time.
    Status st = image_.remove_snapshot(snapshot_);
    if (st.is_ok()) st = image_.create_snapshot(snapshot_);
    anchor_ = st.is_ok();
    if (!st.is_ok()) {
      log::warn("{}; taking the lock again will drop every clean cached block", st.to_string());
    }
  }
  coherent_ = false;
  stop_clean_hits();
  RBDCACHE_RETURN_IF_ERROR(image_.release_exclusive_lock());
  claimed_ = false;
  return Status::ok();
}

Result<std::optional<std::vector<ByteExtent>>> CacheOwnership::stale_since_anchor() {
  if (!anchor_) return std::optional<std::vector<ByteExtent>>();
  auto changed = image_.changed_since(snapshot_);
  if (!changed.is_ok()) return changed.status();
  return std::optional<std::vector<ByteExtent>>(std::move(changed).value());
}

void CacheOwnership::reconciled() {
  if (anchor_) {
    Status st = image_.remove_snapshot(snapshot_);
    if (!st.is_ok()) log::warn("{}", st.to_string());
    anchor_ = false;
  }
  coherent_ = true;
}

void CacheOwnership::detach(uint64_t valid_blocks, uint64_t dirty_blocks) {
  // Not coherent: the cache was current at its anchor, if it has one, and
  // not necessarily now; without one, the next attach drops every clean block.
  if (valid_blocks > 0 && coherent_) {
    Status st = image_.remove_snapshot(snapshot_);
    if (st.is_ok()) st = image_.create_snapshot(snapshot_);
    if (!st.is_ok()) {
      log::warn("{}; the next attach will drop every clean cached block", st.to_string());
    }
  }
  Status st = record_state(dirty_blocks > 0 ? Mode::kWriteback : Mode::kPassthrough, dirty_blocks);
  if (!st.is_ok()) log::warn("recording the cache's state in the image: {}", st.to_string());
}

}  // namespace rbdcache::cache
