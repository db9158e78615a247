// Attaching a formatted cache to an origin: the checks that decide whether
// a metadata device and a cache device may serve this origin, and the
// objects that serve it.
//
// Refused, each with its own message:
//   - an unformatted metadata device (run `rbdcache format`);
//   - a metadata device holding something else, or corrupt metadata;
//   - a cache device whose header names another cache;
//   - a cache device smaller than the superblock says;
//   - a cache formatted for (first attached to) another origin.
// On the first attach the origin's identity is written to the superblock.
// For a shared origin (RBD), CacheOwnership's rules apply as well
// (cache/ownership.h): the exclusive lock, another cache's dirty data, and
// dropping clean blocks the image changed while this cache was away.
#pragma once

#include <memory>
#include <string>

#include "cache/cache_device.h"
#include "cache/engine.h"
#include "cache/ownership.h"
#include "metalog/block_device.h"
#include "metalog/writer.h"
#include "origin/origin.h"

namespace rbdcache::cache {

struct AttachOptions {
  std::string meta_dev;
  std::string cache_dev;
  EngineOptions engine;
  bool force = false;  // CacheOwnership::Options::force
  std::string host;    // this host's name, recorded in the image
};

class AttachedCache {
 public:
  // `origin` must outlive the returned object.
  static Result<std::unique_ptr<AttachedCache>> open(Origin& origin, const AttachOptions& opts);
  ~AttachedCache();

  CacheEngine& engine() { return *engine_; }
  const metalog::Superblock& superblock() const { return log_->superblock(); }
  metalog::MetadataLog& log() { return *log_; }
  // nullptr for an origin that is not shared (a file).
  CacheOwnership* ownership() { return ownership_.get(); }

  // For a shared image (control thread, holding the control lock): takes
  // the image's exclusive lock (CacheOwnership::ensure_lock); when the cache
  // was not coherent, drops the clean blocks the image changed since its
  // anchor snapshot, and only then serves clean hits again.
  [[nodiscard]] Status take_lock();
  // Gives the lock up (CacheOwnership::release); clean hits stop before.
  [[nodiscard]] Status release();

  // Stops background work and closes the metadata log cleanly; for a shared
  // image, leaves the detach snapshot and records the final state.
  [[nodiscard]] Status close();

 private:
  AttachedCache() = default;
  std::unique_ptr<metalog::FileBlockDevice> meta_;
  std::unique_ptr<metalog::MetadataLog> log_;
  std::unique_ptr<FileCacheDevice> dev_;
  std::unique_ptr<CacheEngine> engine_;
  std::unique_ptr<CacheOwnership> ownership_;
};

}  // namespace rbdcache::cache
