// Encoding NBD transmission replies: simple replies and structured chunks.
//
// Each function appends the encoded header (and any small payload) to `out`;
// READ data is not copied but sent by the connection as a second iovec.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "nbd/protocol.h"
#include "origin/origin.h"

namespace rbdcache::nbd {

void encode_simple_reply(std::vector<std::byte>& out, uint64_t handle, Error error);

// The header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk; `data_length`
// bytes of data must follow it on the wire.
void encode_read_chunk_header(std::vector<std::byte>& out, uint64_t handle, uint64_t offset,
                              uint32_t data_length);

// A final NBD_REPLY_TYPE_ERROR chunk carrying `message`.
void encode_error_chunk(std::vector<std::byte>& out, uint64_t handle, Error error,
                        std::string_view message);

// A final NBD_REPLY_TYPE_BLOCK_STATUS chunk for the base:allocation context.
void encode_block_status_chunk(std::vector<std::byte>& out, uint64_t handle,
                               const std::vector<Extent>& extents);

}  // namespace rbdcache::nbd
