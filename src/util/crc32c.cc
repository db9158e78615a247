#include "rbdcache/crc32c.h"

#include <isa-l/crc.h>

namespace rbdcache {

uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data) {
  // crc32_iscsi works on the inverted register; invert on the way in and out.
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  return crc32_iscsi(p, static_cast<int>(data.size()), crc ^ 0xffffffffu) ^ 0xffffffffu;
}

uint32_t crc32c(std::span<const std::byte> data) { return crc32c_extend(0, data); }

}  // namespace rbdcache
