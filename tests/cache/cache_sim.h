// A miniature cache engine for policy tests: a Mapping and an SmqPolicy
// wired together the way the engine wires them (no data, no I/O), so a test
// can replay an access pattern and count hits.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "cache/mapping.h"
#include "cache/smq_policy.h"

namespace rbdcache::cache::testing {

class CacheSim {
 public:
  explicit CacheSim(SmqConfig cfg)
      : mapping_(std::move(Mapping::create(cfg.nr_blocks, cfg.block_size)).value()),
        policy_(std::move(SmqPolicy::create(cfg)).value()) {}

  // One whole-block access. True on a hit.
  bool access(uint64_t block, bool is_write = false) {
    const OriginBlock ob(block);
    const std::optional<CacheBlock> cached = mapping_.lookup(ob);
    const uint64_t bs = mapping_.block_size();
    const Decision d = policy_->on_access(
        Access{ob, block * bs, static_cast<uint32_t>(bs), is_write, cached});
    if (cached) {
      EXPECT_EQ(d, Decision::kHit);
      if (is_write) write_into(*cached);
      return true;
    }
    if (d == Decision::kPromote) promote(ob, is_write);
    return false;
  }

  bool cached(uint64_t block) const { return mapping_.lookup(OriginBlock(block)).has_value(); }
  Mapping& mapping() { return mapping_; }
  SmqPolicy& policy() { return *policy_; }
  uint64_t dirty_victims() const { return dirty_victims_; }

 private:
  void write_into(CacheBlock cb) {
    mapping_.mark_dirty(cb, mapping_.whole_block());
    policy_->set_dirty(cb, true);
  }

  void promote(OriginBlock ob, bool is_write) {
    std::optional<CacheBlock> slot = mapping_.allocate_free();
    if (!slot) {
      const std::optional<CacheBlock> victim = policy_->choose_victim();
      if (!victim) return;
      if (mapping_.is_dirty(*victim)) {  // the engine's safety check
        ++dirty_victims_;
        policy_->restore(*victim);
        return;
      }
      mapping_.remove(*victim);
      policy_->on_remove(*victim);
      slot = mapping_.allocate_free();
      ASSERT_TRUE(slot.has_value());
    }
    ASSERT_TRUE(mapping_.insert(ob, *slot).is_ok());
    policy_->on_insert(*slot);
    if (is_write) {
      write_into(*slot);
    } else {
      mapping_.mark_valid(*slot, mapping_.whole_block());
    }
  }

  Mapping mapping_;
  std::unique_ptr<SmqPolicy> policy_;
  uint64_t dirty_victims_ = 0;
};

}  // namespace rbdcache::cache::testing
