// The NBD fixed-newstyle handshake as a pure state machine.
//
// Handshake does no I/O: the connection feeds it the bytes it received and
// sends whatever it appends to `out`. This keeps the option parser testable
// and fuzzable byte by byte. Every length and count from the client is checked
// before it is used; a client that breaks the protocol ends the handshake in
// the kClosed state with a reason.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nbd/protocol.h"

namespace rbdcache::nbd {

// The export as the handshake describes it.
struct ExportInfo {
  std::string name;         // the export's name; the empty name also selects it
  std::string description;  // free text for NBD_INFO_DESCRIPTION
  uint64_t size = 0;
  bool read_only = false;
  bool can_flush = true;
  bool can_trim = true;
  bool can_zero = true;
  bool can_fast_zero = true;
  bool can_cache = true;
  bool can_multi_conn = true;
};

// What the client and server agreed on, valid once the handshake is done.
struct Session {
  bool structured_replies = false;
  bool base_allocation = false;  // base:allocation context selected
  uint16_t transmission_flags = 0;
  std::string export_name;       // as the client asked for it
};

// Computes the transmission flags for `exp`, given whether structured replies
// were negotiated (DF is only offered with them).
uint16_t transmission_flags(const ExportInfo& exp, bool structured_replies);

class Handshake {
 public:
  // Option payloads longer than this are skipped and answered with
  // NBD_REP_ERR_TOO_BIG (or end the handshake for NBD_OPT_EXPORT_NAME).
  static constexpr uint32_t kMaxOptionLength = 64 * 1024;
  // NBD strings (export names, context queries) are at most 4096 bytes.
  static constexpr uint32_t kMaxStringLength = 4096;

  enum class State { kClientFlags, kOptionHeader, kOptionData, kSkipOptionData, kTransmission, kClosed };

  // `exp` must outlive the Handshake.
  explicit Handshake(const ExportInfo& exp);

  // The server's opening bytes: NBDMAGIC, IHAVEOPT, handshake flags.
  std::vector<std::byte> greeting() const;

  // Consumes a prefix of `in`, appending any bytes to send to `out`. Returns
  // the number of bytes consumed; the caller keeps the rest and calls again
  // with more. Consumes nothing once the state is kTransmission or kClosed:
  // bytes after NBD_OPT_GO belong to the transmission phase.
  size_t consume(std::span<const std::byte> in, std::vector<std::byte>& out);

  State state() const { return state_; }
  bool in_transmission() const { return state_ == State::kTransmission; }
  bool closed() const { return state_ == State::kClosed; }
  // Why the handshake closed: a protocol violation, or "client aborted".
  const std::string& close_reason() const { return close_reason_; }
  const Session& session() const { return session_; }

 private:
  void handle_option(std::span<const std::byte> data, std::vector<std::byte>& out);
  void handle_export_name(std::span<const std::byte> data, std::vector<std::byte>& out);
  void handle_info_or_go(std::span<const std::byte> data, std::vector<std::byte>& out);
  void handle_meta_context(std::span<const std::byte> data, std::vector<std::byte>& out);
  void reply(std::vector<std::byte>& out, uint32_t type, std::span<const std::byte> payload = {});
  void reply_error(std::vector<std::byte>& out, uint32_t type, std::string_view message);
  bool export_matches(std::string_view name) const;
  void close(std::string reason);

  const ExportInfo& exp_;
  State state_ = State::kClientFlags;
  bool no_zeroes_ = false;
  uint32_t option_ = 0;
  uint32_t option_length_ = 0;
  uint64_t skip_remaining_ = 0;
  Session session_;
  std::string close_reason_;
};

}  // namespace rbdcache::nbd
