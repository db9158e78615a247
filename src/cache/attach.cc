#include "cache/attach.h"

#include "metalog/format.h"
#include "metalog/superblock.h"
#include "util/log.h"

namespace rbdcache::cache {

Result<std::unique_ptr<AttachedCache>> AttachedCache::open(Origin& origin, const AttachOptions& opts) {
  std::unique_ptr<AttachedCache> c(new AttachedCache());
  auto meta = metalog::FileBlockDevice::open(opts.meta_dev, false);
  if (!meta.is_ok()) return meta.status();
  c->meta_ = std::move(meta).value();

  auto sb = metalog::read_superblock(*c->meta_);
  if (!sb.is_ok()) {
    const Status& st = sb.status();
    if (st.err() == ENODATA) {
      return Status::from_errno(
          ENODATA, fmt::format("metadata device '{}' is not formatted; run 'rbdcache format "
                               "--meta-dev {} --cache-dev {}' first",
                               opts.meta_dev, opts.meta_dev, opts.cache_dev));
    }
    return st.with_context(fmt::format("metadata device '{}'", opts.meta_dev));
  }

  {
    auto cache_hdr_dev = metalog::FileBlockDevice::open(opts.cache_dev, true);
    if (!cache_hdr_dev.is_ok()) return cache_hdr_dev.status();
    auto hdr = metalog::read_cache_header(*cache_hdr_dev.value());
    if (!hdr.is_ok()) {
      return hdr.status().with_context(
          fmt::format("cache device '{}' has no valid rbdcache header (was it formatted "
                      "together with '{}'?)",
                      opts.cache_dev, opts.meta_dev));
    }
    if (!(hdr->cache_uuid == sb->uuid)) {
      return Status::from_errno(
          EMEDIUMTYPE,
          fmt::format("cache device '{}' belongs to cache {}, but metadata device '{}' is cache {}",
                      opts.cache_dev, hdr->cache_uuid.to_string(), opts.meta_dev,
                      sb->uuid.to_string()));
    }
  }

  const std::string id = origin.identity();
  if (sb->compat & metalog::kCompatOriginIdentity) {
    if (sb->origin_id != id || sb->origin_size != origin.size()) {
      return Status::from_errno(
          EMEDIUMTYPE,
          fmt::format("this cache belongs to origin '{}' ({} bytes), not '{}' ({} bytes); "
                      "format a new cache for this origin",
                      sb->origin_id, sb->origin_size, id, origin.size()));
    }
  } else {
    if (id.size() > sizeof(metalog::SuperblockDisk::origin_id)) {
      return Status::invalid_argument(fmt::format("origin identity '{}' is too long", id));
    }
    metalog::Superblock updated = sb.value();
    updated.origin_id = id;
    updated.origin_size = origin.size();
    updated.compat |= metalog::kCompatOriginIdentity;
    RBDCACHE_RETURN_IF_ERROR(metalog::write_superblock(*c->meta_, updated));
    log::info("cache {} is now bound to origin '{}'", updated.uuid.to_string(), id);
  }

  auto log = metalog::MetadataLog::open(*c->meta_);
  if (!log.is_ok()) {
    return log.status().with_context(
        fmt::format("refusing to serve from metadata device '{}'", opts.meta_dev));
  }
  c->log_ = std::move(log).value();

  AttachPlan plan;
  if (SharedImage* img = origin.shared_image()) {
    uint64_t valid = 0, dirty = 0;
    for (const auto& [cb, m] : c->log_->mappings()) {
      if (!m.valid.none()) ++valid;
      if (!m.dirty.none()) ++dirty;
    }
    CacheOwnership::Options oo;
    oo.mode = opts.engine.mode;
    oo.force = opts.force;
    oo.host = opts.host;
    auto own = CacheOwnership::attach(*img, c->log_->superblock(), valid, dirty, oo, plan);
    if (!own.is_ok()) return own.status();
    c->ownership_ = std::move(own).value();
    metalog::Superblock updated = c->log_->superblock();
    updated.cache_epoch = plan.new_epoch;
    RBDCACHE_RETURN_IF_ERROR(metalog::write_superblock(*c->meta_, updated));
  }
  const metalog::Superblock& s = c->log_->superblock();

  auto dev = FileCacheDevice::open(opts.cache_dev, s.cache_data_offset, s.cache_block_size,
                               static_cast<uint32_t>(s.cache_block_count));
  if (!dev.is_ok()) return dev.status();
  c->dev_ = std::move(dev).value();

  auto engine = CacheEngine::create(origin, *c->log_, *c->dev_, opts.engine);
  if (!engine.is_ok()) return engine.status();
  c->engine_ = std::move(engine).value();
  c->engine_->set_clean_hits(c->ownership_ == nullptr || c->ownership_->coherent());
  if (c->ownership_ && !c->ownership_->coherent()) {
    log::info("the cache serves no clean cached data until it holds the image's exclusive lock "
              "(mode writeback)");
  }
  if (plan.drop_clean) {
    log::warn("dropping clean cached blocks before serving: {}", plan.reason);
    std::optional<std::vector<ByteExtent>> which;
    if (!plan.drop_clean->empty()) which = std::move(*plan.drop_clean);
    auto dropped = c->engine_->invalidate(which, false);
    if (!dropped.is_ok()) return dropped.status();
    if (dropped->dirty_kept_bytes > 0 && which) {
      log::warn("{} bytes of this cache's DIRTY data lie where the image was written while the "
                "cache was away; the cache's data wins and will be written back over it",
                dropped->dirty_kept_bytes);
    }
  }
  if (c->ownership_) c->ownership_->attached();
  return c;
}

Status AttachedCache::take_lock() {
  if (!ownership_) return Status::ok();
  RBDCACHE_RETURN_IF_ERROR(ownership_->ensure_lock());
  if (ownership_->coherent()) return Status::ok();
  auto stale = ownership_->stale_since_anchor();
  if (!stale.is_ok()) return stale.status();
  uint64_t bytes = 0;
  if (*stale) {
    for (const auto& e : **stale) bytes += e.length;
  }
  if (!*stale || bytes > 0) {
    log::warn("dropping clean cached blocks before serving them: {}",
              *stale ? fmt::format("{} bytes of the image were written since this cache last "
                                   "held its lock", bytes)
                     : std::string("the cache has no snapshot of when it last held the lock"));
    auto dropped = engine_->invalidate(*stale, false);
    if (!dropped.is_ok()) return dropped.status();
  }
  ownership_->reconciled();
  engine_->set_clean_hits(true);
  return Status::ok();
}

Status AttachedCache::release() {
  if (!ownership_) return Status::invalid_argument("the origin is not a shared image");
  const EngineStats s = engine_->stats();
  return ownership_->release(s.mode, s.dirty_bytes, [this] { engine_->set_clean_hits(false); });
}

AttachedCache::~AttachedCache() {
  if (engine_) close().ignore_error();
}

Status AttachedCache::close() {
  if (!engine_) return Status::ok();
  Status st = engine_->shutdown();
  if (ownership_ && st.is_ok()) {
    EngineStats es = engine_->stats();
    ownership_->detach(es.mapped_blocks, es.dirty_blocks);
  }
  engine_.reset();
  return st;
}

}  // namespace rbdcache::cache
