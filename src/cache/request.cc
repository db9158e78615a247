#include "cache/request.h"

#include <algorithm>

namespace rbdcache::cache {

bool Part::direct() const {
  return s % kSubBlockSize == 0 && e % kSubBlockSize == 0 &&
         reinterpret_cast<uintptr_t>(user) % kSubBlockSize == 0;
}

std::vector<Part> split(const Request& req, std::byte* user, uint32_t block_size) {
  std::vector<Part> parts;
  uint64_t pos = req.offset;
  const uint64_t end = req.offset + req.length;
  while (pos < end) {
    Part p;
    p.ob = OriginBlock(pos / block_size);
    p.s = static_cast<uint32_t>(pos % block_size);
    p.e = static_cast<uint32_t>(std::min<uint64_t>(block_size, p.s + (end - pos)));
    p.user = user ? user + (pos - req.offset) : nullptr;
    parts.push_back(p);
    pos += p.e - p.s;
  }
  return parts;
}

}  // namespace rbdcache::cache
