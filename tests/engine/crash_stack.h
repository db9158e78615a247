// A cache stack for crash tests: a CacheEngine over a fault metadata device,
// a fault cache device and a fault origin, all behind one PowerSwitch, and
// the images each device holds after a cut, from which the stack is opened
// again. Shared by the power-cut test and the model-based test.
//
// Kinds of cut (crash_images()):
//   - kPowerCut: each device keeps what it synced, plus a random selection of
//     its other writes (the cache and metadata devices also tear one);
//   - kSyncedOnly: the cache device and the origin keep only what they
//     synced (and FUA writes); the metadata device a random prefix of the
//     rest;
//   - kProcessCrash: every write any device completed survives, as the
//     kernel's page cache keeps it when only the process dies; what the
//     engine held only in memory is lost.
//
// Each stack opens its metadata log with an intent ring, in a private
// directory on tmpfs. A process crash keeps the ring file for the restart
// (a copy taken at the cut, so that the dead engine's later stores cannot
// reach it); a power cut loses it, as a reboot empties tmpfs.
//
// Threads: a Stack is used by one test thread; its engine by any reactor.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "../metalog/fault_device.h"
#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "fault_cache_device.h"
#include "fault_origin.h"
#include "metalog/block_device.h"
#include "metalog/writer.h"
#include "origin/file_origin.h"

namespace rbdcache::cache::testing {

// The metadata device of one stack: the fault-injecting device, reachable
// only while the stack's power is on. It also keeps the image with every
// write applied, for a process crash.
class PoweredBlockDevice final : public metalog::BlockDevice {
 public:
  PoweredBlockDevice(metalog::testing::FaultInjectionDevice& dev, PowerSwitch& power,
                     std::vector<std::byte> image)
      : dev_(dev), power_(power), current_(std::move(image)) {}
  uint64_t size() const override { return dev_.size(); }
  Status read(uint64_t offset, std::span<std::byte> data) override;
  Status write(uint64_t offset, std::span<const std::byte> data) override;
  Status sync() override;
  Status discard(uint64_t offset, uint64_t length) override;
  // Every write that succeeded, applied.
  std::vector<std::byte> current_image() const;

 private:
  metalog::testing::FaultInjectionDevice& dev_;
  PowerSwitch& power_;
  std::vector<std::byte> current_;  // guarded by power_.mutex()
};

// A scratch file (in memory when /dev/shm is there) holding an origin image,
// opened as a FileOrigin.
struct OriginFile {
  explicit OriginFile(const std::vector<std::byte>& image);
  rbdcache::testing::ScratchFile file;
  std::unique_ptr<FileOrigin> origin;
};

// A private directory under /dev/shm for intent ring files, removed with
// everything in it when the last owner lets go.
class RingDir {
 public:
  // Fails (returns null) when /dev/shm cannot be written.
  static std::shared_ptr<RingDir> create();
  ~RingDir();
  RingDir(const RingDir&) = delete;
  RingDir& operator=(const RingDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  explicit RingDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// What the devices of a stack hold.
struct StackImages {
  std::vector<std::byte> meta;
  std::vector<std::byte> cache;  // the cache device's data area
  std::vector<std::byte> origin;
  // The tmpfs directory whose ring file the log takes back at open; null:
  // a fresh, empty one (as after a reboot).
  std::shared_ptr<RingDir> ring;
};

// A freshly formatted cache: metadata image and the junk a new cache device
// holds (no read may ever return those bytes).
struct CacheGeometry {
  uint32_t block_size = 16u << 10;
  uint32_t blocks = 32;  // the device has one more block for the header
  uint64_t meta_size = 1u << 20;
  uint32_t segment_size = 16u << 10;
};
// Fills `out.meta` and `out.cache`; `out.origin` is the caller's.
void format_images(const CacheGeometry& g, StackImages& out);

// One cache stack over fault devices. Members are destroyed engine first.
struct Stack {
  std::shared_ptr<PowerSwitch> power;
  std::shared_ptr<RingDir> ring_dir;  // outlives the log
  std::unique_ptr<OriginFile> origin_file;
  std::unique_ptr<FaultOrigin> origin;
  std::unique_ptr<metalog::testing::FaultInjectionDevice> meta_fault;
  std::unique_ptr<PoweredBlockDevice> meta;
  std::unique_ptr<FaultCacheDevice> cache;
  std::unique_ptr<metalog::MetadataLog> log;
  std::unique_ptr<CacheEngine> engine;

  ~Stack();
};

// Builds the stack by hand, as attach does, over fault devices holding the
// given images.
[[nodiscard]] Status open_stack(Stack& s, const StackImages& images, const EngineOptions& opts,
                                std::chrono::microseconds cache_sync_latency = {});

enum class Cut { kPowerCut, kSyncedOnly, kProcessCrash };
const char* cut_name(Cut c);

// Cuts the stack's power (if it is not cut yet) and returns what its devices
// hold afterwards. The engine is left running, cut off from its devices.
StackImages crash_images(Stack& s, Cut how, std::mt19937_64& rng);

// After crash_images(): stops the dead engine. Held origin completions are
// released first, and run (for up to 10 s), so that nothing is left pending
// on a reactor once the engine is gone.
void discard_engine(Stack& s);

}  // namespace rbdcache::cache::testing
