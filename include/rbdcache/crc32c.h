// CRC32C (Castagnoli), as used by iSCSI, ext4 and the metadata log.
//
// Backed by ISA-L's crc32_iscsi, which uses the SSE4.2/PCLMUL instructions
// where the CPU has them. crc32_iscsi leaves the final inversion to the caller;
// these helpers return the standard value (crc32c("123456789") == 0xE3069283).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace rbdcache {

// Standard CRC32C of `data`.
uint32_t crc32c(std::span<const std::byte> data);

// Continues a standard CRC32C: crc32c_extend(crc32c(a), b) == crc32c(a ++ b).
uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data);

}  // namespace rbdcache
