// Decoding and validating NBD transmission requests.
//
// validate_request() is the only place that judges a request from the wire.
// Everything behind it (the connection's dispatch, the origin, later the
// cache) may assume the request is in range and its flags are meaningful.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace rbdcache::nbd {

struct RequestHeader {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Precondition: `p` holds kRequestHeaderSize bytes.
RequestHeader decode_request_header(const std::byte* p);

// What the connection must do with a request.
struct Verdict {
  enum class Action {
    kServe,       // valid: dispatch it
    kReject,      // reply with `error`; the connection continues
    kDisconnect,  // the stream cannot be trusted any more: close it
  };
  Action action = Action::kServe;
  Error error = kErrNone;
  // Bytes of payload that follow the header on the wire and must be read
  // (for a served WRITE) or read and dropped (for a rejected one).
  uint32_t payload_length = 0;
  std::string reason;  // for the log, when not kServe
};

// The limits a request is checked against.
struct ExportLimits {
  uint64_t size = 0;
  uint16_t transmission_flags = 0;
  bool structured_replies = false;
  bool base_allocation = false;
};

ExportLimits limits_for(const ExportInfo& exp, const Session& session);

Verdict validate_request(const RequestHeader& req, const ExportLimits& limits);

}  // namespace rbdcache::nbd
