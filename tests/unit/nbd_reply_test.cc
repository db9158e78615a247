// Tests for the transmission reply encoders (nbd/reply.h): exact bytes on the
// wire, as laid out in the NBD protocol document.
#include "nbd/reply.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "nbd/protocol.h"

namespace rbdcache::nbd {
namespace {

using Bytes = std::vector<std::byte>;

Bytes hex(std::initializer_list<unsigned> v) {
  Bytes b;
  for (unsigned x : v) b.push_back(static_cast<std::byte>(x));
  return b;
}

Bytes append(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Reply, SimpleReplyBytes) {
  Bytes out;
  encode_simple_reply(out, 0x0102030405060708ull, kErrNone);
  EXPECT_EQ(out, hex({0x67, 0x44, 0x66, 0x98,               // magic
                      0x00, 0x00, 0x00, 0x00,               // error
                      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08}));  // handle
  EXPECT_EQ(out.size(), kSimpleReplySize);
}

TEST(Reply, SimpleReplyCarriesErrorAndAppends) {
  Bytes out = hex({0xee});
  encode_simple_reply(out, 7, kErrNoSpc);
  EXPECT_EQ(out, hex({0xee, 0x67, 0x44, 0x66, 0x98, 0x00, 0x00, 0x00, 28, 0, 0, 0, 0, 0, 0, 0, 7}));
}

TEST(Reply, ReadChunkHeaderBytes) {
  Bytes out;
  encode_read_chunk_header(out, 0xaabbccddeeff0011ull, 0x0000000100002000ull, 4096);
  EXPECT_EQ(out, hex({0x66, 0x8e, 0x33, 0xef,                          // magic
                      0x00, 0x01,                                      // flags: DONE
                      0x00, 0x01,                                      // type: OFFSET_DATA
                      0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11,  // handle
                      0x00, 0x00, 0x10, 0x08,                          // length: 8 + 4096
                      0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x20, 0x00}));  // offset
  EXPECT_EQ(out.size(), kStructuredChunkHeaderSize + 8);
}

TEST(Reply, ErrorChunkBytes) {
  Bytes out;
  encode_error_chunk(out, 9, kErrIo, "bad");
  EXPECT_EQ(out, hex({0x66, 0x8e, 0x33, 0xef,              // magic
                      0x00, 0x01,                          // flags: DONE
                      0x80, 0x01,                          // type: ERROR
                      0, 0, 0, 0, 0, 0, 0, 9,              // handle
                      0x00, 0x00, 0x00, 0x09,              // length: 4 + 2 + 3
                      0x00, 0x00, 0x00, 0x05,              // error: EIO
                      0x00, 0x03,                          // message length
                      'b', 'a', 'd'}));
}

TEST(Reply, ErrorChunkWithEmptyMessage) {
  Bytes out;
  encode_error_chunk(out, 1, kErrInval, "");
  ASSERT_EQ(out.size(), kStructuredChunkHeaderSize + 6);
  EXPECT_EQ(load_be32(out.data() + 16), 6u);
  EXPECT_EQ(load_be32(out.data() + 20), 22u);
  EXPECT_EQ(load_be16(out.data() + 24), 0u);
}

TEST(Reply, ErrorChunkLengthsAgreeForLongMessages) {
  const std::string msg(5000, 'x');
  Bytes out;
  encode_error_chunk(out, 1, kErrInval, msg);
  ASSERT_GE(out.size(), kStructuredChunkHeaderSize + 6);
  const uint32_t chunk_len = load_be32(out.data() + 16);
  const uint16_t msg_len = load_be16(out.data() + 24);
  // The chunk length covers exactly the error, the message length and the message.
  EXPECT_EQ(chunk_len, 6u + msg_len);
  EXPECT_EQ(out.size(), kStructuredChunkHeaderSize + chunk_len);
  EXPECT_GT(msg_len, 0u);
  EXPECT_LE(msg_len, msg.size());
}

TEST(Reply, BlockStatusChunkBytes) {
  Bytes out;
  std::vector<Extent> extents = {{65536, 0}, {4096, Extent::kHole | Extent::kZero}};
  encode_block_status_chunk(out, 0x42, extents);
  EXPECT_EQ(out, hex({0x66, 0x8e, 0x33, 0xef,        // magic
                      0x00, 0x01,                    // flags: DONE
                      0x00, 0x05,                    // type: BLOCK_STATUS
                      0, 0, 0, 0, 0, 0, 0, 0x42,     // handle
                      0x00, 0x00, 0x00, 0x14,        // length: 4 + 2 * 8
                      0x00, 0x00, 0x00, 0x01,        // context id: base:allocation
                      0x00, 0x01, 0x00, 0x00,        // extent 1 length
                      0x00, 0x00, 0x00, 0x00,        // extent 1 flags
                      0x00, 0x00, 0x10, 0x00,        // extent 2 length
                      0x00, 0x00, 0x00, 0x03}));     // extent 2 flags: HOLE | ZERO
}

TEST(Reply, RepliesAppendToExistingBuffer) {
  Bytes out;
  encode_simple_reply(out, 1, kErrNone);
  encode_read_chunk_header(out, 2, 0, 1);
  Bytes expected;
  encode_simple_reply(expected, 1, kErrNone);
  Bytes second;
  encode_read_chunk_header(second, 2, 0, 1);
  EXPECT_EQ(out, append(expected, second));
}

}  // namespace
}  // namespace rbdcache::nbd
