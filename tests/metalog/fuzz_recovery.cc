// libFuzzer target for the recovery scanner: any bytes, taken as a metadata
// device image, must be scanned without crashing, hanging or leaking.
// The seed corpus (corpus/) holds small formatted logs with records, so the
// fuzzer starts past the superblock checks and mutates segments and records.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "metalog/block_device.h"
#include "metalog/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rbdcache::metalog;
  if (size > (1u << 20)) return 0;
  std::vector<std::byte> img(size);
  if (size) std::memcpy(img.data(), data, size);
  // Round up to whole blocks so reads of the last block succeed.
  img.resize((img.size() + kLogBlockSize - 1) / kLogBlockSize * kLogBlockSize);
  MemBlockDevice dev(std::move(img));
  auto rec = scan_log(dev);
  if (rec.is_ok()) {
    // Touch the results so the scan cannot be optimised away.
    volatile size_t n = rec->problems.size() + rec->state.mappings().size();
    (void)n;
  }
  return 0;
}
