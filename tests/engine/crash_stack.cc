#include "crash_stack.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include "metalog/formatter.h"

namespace rbdcache::cache::testing {

using metalog::testing::FaultInjectionDevice;

Status PoweredBlockDevice::read(uint64_t offset, std::span<std::byte> data) {
  std::lock_guard<std::mutex> lock(power_.mutex());
  return power_.on_locked() ? dev_.read(offset, data) : Status::io_error("power lost");
}

Status PoweredBlockDevice::write(uint64_t offset, std::span<const std::byte> data) {
  std::lock_guard<std::mutex> lock(power_.mutex());
  if (!power_.on_locked()) return Status::io_error("power lost");
  Status st = dev_.write(offset, data);
  if (st.is_ok()) std::copy(data.begin(), data.end(), current_.begin() + static_cast<ptrdiff_t>(offset));
  return st;
}

Status PoweredBlockDevice::sync() {
  std::lock_guard<std::mutex> lock(power_.mutex());
  return power_.on_locked() ? dev_.sync() : Status::io_error("power lost");
}

Status PoweredBlockDevice::discard(uint64_t offset, uint64_t length) {
  std::lock_guard<std::mutex> lock(power_.mutex());
  if (!power_.on_locked()) return Status::io_error("power lost");
  Status st = dev_.discard(offset, length);
  if (st.is_ok()) {
    std::fill_n(current_.begin() + static_cast<ptrdiff_t>(offset), length, std::byte{0});
  }
  return st;
}

std::vector<std::byte> PoweredBlockDevice::current_image() const {
  std::lock_guard<std::mutex> lock(power_.mutex());
  return current_;
}

namespace {
// Origin writes are dropped by the fault origin, not by the file, so the
// file's syncs need not reach a disk: keep it in memory when possible.
std::string origin_dir() {
  return ::access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm")
                                         : rbdcache::testing::scratch_dir();
}
}  // namespace

OriginFile::OriginFile(const std::vector<std::byte>& image) : file(origin_dir()) {
  EXPECT_EQ(::pwrite(file.fd(), image.data(), image.size(), 0),
            static_cast<ssize_t>(image.size()));
  auto o = FileOrigin::open(file.path(), false);
  EXPECT_TRUE(o.is_ok()) << o.status().to_string();
  if (o.is_ok()) origin = std::move(o).value();
}

std::shared_ptr<RingDir> RingDir::create() {
  std::string tmpl = "/dev/shm/rbdcache-ring-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return nullptr;
  return std::shared_ptr<RingDir>(new RingDir(tmpl));
}

RingDir::~RingDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void format_images(const CacheGeometry& g, StackImages& out) {
  metalog::MemBlockDevice meta(g.meta_size), cache_hdr(uint64_t{g.block_size} * (g.blocks + 1));
  metalog::FormatOptions fo;
  fo.cache_block_size = g.block_size;
  fo.segment_size = g.segment_size;
  auto sb = metalog::format_devices(meta, cache_hdr, fo);
  ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
  out.meta = meta.image();
  out.cache = rbdcache::testing::pattern(sb->cache_block_count * g.block_size, 0xdead);
}

Stack::~Stack() {
  engine.reset();
  log.reset();
}

Status open_stack(Stack& s, const StackImages& images, const EngineOptions& opts,
                  std::chrono::microseconds cache_sync_latency) {
  s.power = std::make_shared<PowerSwitch>();
  s.origin_file = std::make_unique<OriginFile>(images.origin);
  if (!s.origin_file->origin) return Status::io_error("cannot open the origin file");
  s.origin = std::make_unique<FaultOrigin>(*s.origin_file->origin, images.origin, s.power);
  s.meta_fault = std::make_unique<FaultInjectionDevice>(images.meta);
  s.meta = std::make_unique<PoweredBlockDevice>(*s.meta_fault, *s.power, images.meta);
  s.ring_dir = images.ring ? images.ring : RingDir::create();
  if (!s.ring_dir) return Status::io_error("cannot create a ring directory under /dev/shm");
  metalog::LogOptions lo;
  lo.ring = metalog::LogOptions::Ring::kOn;
  lo.ring_options.dir = s.ring_dir->path();
  auto log = metalog::MetadataLog::open(*s.meta, lo);
  if (!log.is_ok()) return log.status().with_context("metadata log");
  s.log = std::move(log).value();
  const metalog::Superblock& sb = s.log->superblock();
  s.cache = std::make_unique<FaultCacheDevice>(sb.cache_block_size,
                                               static_cast<uint32_t>(sb.cache_block_count),
                                               images.cache, s.power, cache_sync_latency);
  auto e = CacheEngine::create(*s.origin, *s.log, *s.cache, opts);
  if (!e.is_ok()) return e.status().with_context("engine");
  s.engine = std::move(e).value();
  return Status::ok();
}

const char* cut_name(Cut c) {
  switch (c) {
    case Cut::kPowerCut: return "power cut";
    case Cut::kSyncedOnly: return "power cut keeping only synced writes";
    case Cut::kProcessCrash: return "process crash";
  }
  return "?";
}

namespace {
// The ring file as it is at the cut, copied into a new directory: the dead
// engine keeps running, and must not change what the restart finds.
std::shared_ptr<RingDir> keep_ring(const Stack& s) {
  auto dir = RingDir::create();
  EXPECT_TRUE(dir) << "cannot create a ring directory under /dev/shm";
  if (!dir || !s.log) return dir;
  const std::string from = s.log->ring_path();
  std::error_code ec;
  if (from.empty() || !std::filesystem::exists(from, ec)) return dir;
  const std::string to =
      metalog::IntentRing::path_for(dir->path(), s.log->superblock().uuid);
  std::filesystem::copy_file(from, to, ec);
  EXPECT_FALSE(ec) << "copying " << from << ": " << ec.message();
  return dir;
}
}  // namespace

StackImages crash_images(Stack& s, Cut how, std::mt19937_64& rng) {
  s.power->cut();
  StackImages img;
  switch (how) {
    case Cut::kPowerCut: {
      auto survival = (rng() & 1) ? FaultInjectionDevice::Survival::kPrefix
                                  : FaultInjectionDevice::Survival::kAnyBlocks;
      img.meta = s.meta_fault->crash_image(rng, survival);
      img.cache = s.cache->crash_image(rng);
      img.origin = s.origin->crash_image(rng);
      break;
    }
    case Cut::kSyncedOnly: {
      // The metadata device keeps a random prefix of its unsynced writes:
      // the log's own crash test covers the rest.
      img.meta = s.meta_fault->crash_image(rng, FaultInjectionDevice::Survival::kPrefix);
      img.cache = s.cache->synced_image();
      img.origin = s.origin->synced_image();
      break;
    }
    case Cut::kProcessCrash:
      img.meta = s.meta->current_image();
      img.cache = s.cache->current_image();
      img.origin = s.origin->current_image();
      img.ring = keep_ring(s);
      break;
  }
  // A power cut loses tmpfs: the restart gets a fresh ring directory.
  return img;
}

void discard_engine(Stack& s) {
  for (int k = 0; k < static_cast<int>(FaultOrigin::Op::kCount); ++k) {
    s.origin->hold(static_cast<FaultOrigin::Op>(k), false);
  }
  s.origin->release_all();
  // The released completions run engine code: let them finish (with EIO,
  // the power being off) before the engine goes away.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.origin->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (s.engine) s.engine->shutdown().ignore_error();
  s.engine.reset();
  s.log.reset();
}

}  // namespace rbdcache::cache::testing
