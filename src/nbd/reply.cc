#include "nbd/reply.h"

namespace rbdcache::nbd {

void encode_simple_reply(std::vector<std::byte>& out, uint64_t handle, Error error) {
  Writer(out).u32(kSimpleReplyMagic).u32(error).u64(handle);
}

void encode_read_chunk_header(std::vector<std::byte>& out, uint64_t handle, uint64_t offset,
                              uint32_t data_length) {
  Writer(out)
      .u32(kStructuredReplyMagic)
      .u16(kReplyFlagDone)
      .u16(kReplyOffsetData)
      .u64(handle)
      .u32(8 + data_length)
      .u64(offset);
}

void encode_error_chunk(std::vector<std::byte>& out, uint64_t handle, Error error,
                        std::string_view message) {
  // The message is informational; keep it short.
  std::string_view msg = message.substr(0, 1024);
  Writer(out)
      .u32(kStructuredReplyMagic)
      .u16(kReplyFlagDone)
      .u16(kReplyError)
      .u64(handle)
      .u32(static_cast<uint32_t>(4 + 2 + msg.size()))
      .u32(error)
      .u16(static_cast<uint16_t>(msg.size()))
      .str(msg);
}

void encode_block_status_chunk(std::vector<std::byte>& out, uint64_t handle,
                               const std::vector<Extent>& extents) {
  Writer w(out);
  w.u32(kStructuredReplyMagic)
      .u16(kReplyFlagDone)
      .u16(kReplyBlockStatus)
      .u64(handle)
      .u32(static_cast<uint32_t>(4 + 8 * extents.size()))
      .u32(kBaseAllocationId);
  for (const Extent& e : extents) {
    w.u32(static_cast<uint32_t>(e.length)).u32(e.flags);
  }
}

}  // namespace rbdcache::nbd
