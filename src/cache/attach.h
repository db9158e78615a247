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
#pragma once

#include <memory>
#include <string>

#include "cache/cache_device.h"
#include "cache/engine.h"
#include "metalog/block_device.h"
#include "metalog/writer.h"
#include "origin/origin.h"

namespace rbdcache::cache {

struct AttachOptions {
  std::string meta_dev;
  std::string cache_dev;
  EngineOptions engine;
};

class AttachedCache {
 public:
  // `origin` must outlive the returned object.
  static Result<std::unique_ptr<AttachedCache>> open(Origin& origin, const AttachOptions& opts);
  ~AttachedCache();

  CacheEngine& engine() { return *engine_; }
  const metalog::Superblock& superblock() const { return log_->superblock(); }
  metalog::MetadataLog& log() { return *log_; }

  // Stops background work and closes the metadata log cleanly.
  Status close();

 private:
  AttachedCache() = default;
  std::unique_ptr<metalog::FileBlockDevice> meta_;
  std::unique_ptr<metalog::MetadataLog> log_;
  std::unique_ptr<FileCacheDevice> dev_;
  std::unique_ptr<CacheEngine> engine_;
};

}  // namespace rbdcache::cache
