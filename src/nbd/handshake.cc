#include "nbd/handshake.h"

#include <fmt/format.h>

namespace rbdcache::nbd {

namespace {

// A bounds-checked cursor over an option's payload.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> data) : data_(data) {}
  bool u16(uint16_t& v) {
    if (left() < 2) return false;
    v = load_be16(data_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool u32(uint32_t& v) {
    if (left() < 4) return false;
    v = load_be32(data_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool str(uint32_t len, std::string& s) {
    if (left() < len) return false;
    s.assign(reinterpret_cast<const char*>(data_.data() + pos_), len);
    pos_ += len;
    return true;
  }
  size_t left() const { return data_.size() - pos_; }

 private:
  std::span<const std::byte> data_;
  size_t pos_ = 0;
};

std::span<const std::byte> as_bytes(const std::vector<std::byte>& v) { return {v.data(), v.size()}; }

}  // namespace

uint16_t transmission_flags(const ExportInfo& exp, bool structured_replies) {
  uint16_t f = kTxHasFlags;
  if (exp.read_only) f |= kTxReadOnly;
  if (exp.can_flush) f |= kTxSendFlush | kTxSendFua;
  if (exp.can_trim && !exp.read_only) f |= kTxSendTrim;
  if (exp.can_zero && !exp.read_only) {
    f |= kTxSendWriteZeroes;
    if (exp.can_fast_zero) f |= kTxSendFastZero;
  }
  if (structured_replies) f |= kTxSendDf;
  if (exp.can_multi_conn) f |= kTxCanMultiConn;
  if (exp.can_cache) f |= kTxSendCache;
  return f;
}

Handshake::Handshake(const ExportInfo& exp) : exp_(exp) {}

std::vector<std::byte> Handshake::greeting() const {
  std::vector<std::byte> out;
  Writer(out).u64(kNbdMagic).u64(kIHaveOpt).u16(kFlagFixedNewstyle | kFlagNoZeroes);
  return out;
}

void Handshake::close(std::string reason) {
  state_ = State::kClosed;
  close_reason_ = std::move(reason);
}

bool Handshake::export_matches(std::string_view name) const {
  return name.empty() || name == exp_.name;
}

size_t Handshake::consume(std::span<const std::byte> in, std::vector<std::byte>& out) {
  size_t used = 0;
  while (true) {
    std::span<const std::byte> rest = in.subspan(used);
    switch (state_) {
      case State::kTransmission:
      case State::kClosed:
        return used;
      case State::kClientFlags: {
        if (rest.size() < 4) return used;
        uint32_t flags = load_be32(rest.data());
        used += 4;
        if (flags & ~kClientKnownFlags) {
          close(fmt::format("client sent unknown handshake flags {:#x}", flags));
          return used;
        }
        no_zeroes_ = (flags & kClientNoZeroes) != 0;
        state_ = State::kOptionHeader;
        break;
      }
      case State::kOptionHeader: {
        if (rest.size() < kOptionHeaderSize) return used;
        uint64_t magic = load_be64(rest.data());
        option_ = load_be32(rest.data() + 8);
        option_length_ = load_be32(rest.data() + 12);
        used += kOptionHeaderSize;
        if (magic != kIHaveOpt) {
          close(fmt::format("bad option magic {:#x}", magic));
          return used;
        }
        if (option_length_ > kMaxOptionLength) {
          if (option_ == kOptExportName) {
            close(fmt::format("NBD_OPT_EXPORT_NAME of {} bytes is too long", option_length_));
            return used;
          }
          skip_remaining_ = option_length_;
          state_ = State::kSkipOptionData;
        } else {
          state_ = State::kOptionData;
        }
        break;
      }
      case State::kSkipOptionData: {
        size_t n = std::min<uint64_t>(skip_remaining_, rest.size());
        used += n;
        skip_remaining_ -= n;
        if (skip_remaining_ > 0) return used;
        reply_error(out, kRepErrTooBig, "option payload too large");
        state_ = State::kOptionHeader;
        break;
      }
      case State::kOptionData: {
        if (rest.size() < option_length_) return used;
        used += option_length_;
        state_ = State::kOptionHeader;
        handle_option(rest.first(option_length_), out);
        break;
      }
    }
  }
}

void Handshake::reply(std::vector<std::byte>& out, uint32_t type, std::span<const std::byte> payload) {
  Writer(out).u64(kOptReplyMagic).u32(option_).u32(type).u32(static_cast<uint32_t>(payload.size()))
      .bytes(payload);
}

void Handshake::reply_error(std::vector<std::byte>& out, uint32_t type, std::string_view message) {
  std::vector<std::byte> msg;
  Writer(msg).str(message);
  reply(out, type, as_bytes(msg));
}

void Handshake::handle_option(std::span<const std::byte> data, std::vector<std::byte>& out) {
  switch (option_) {
    case kOptExportName:
      handle_export_name(data, out);
      return;
    case kOptAbort:
      reply(out, kRepAck);
      close("client aborted the handshake");
      return;
    case kOptList: {
      if (!data.empty()) {
        reply_error(out, kRepErrInvalid, "NBD_OPT_LIST takes no data");
        return;
      }
      std::vector<std::byte> payload;
      Writer(payload).u32(static_cast<uint32_t>(exp_.name.size())).str(exp_.name);
      reply(out, kRepServer, as_bytes(payload));
      reply(out, kRepAck);
      return;
    }
    case kOptInfo:
    case kOptGo:
      handle_info_or_go(data, out);
      return;
    case kOptStructuredReply:
      if (!data.empty()) {
        reply_error(out, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
        return;
      }
      session_.structured_replies = true;
      reply(out, kRepAck);
      return;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      handle_meta_context(data, out);
      return;
    default:
      reply_error(out, kRepErrUnsup, fmt::format("option {} is not supported", option_));
      return;
  }
}

void Handshake::handle_export_name(std::span<const std::byte> data, std::vector<std::byte>& out) {
  std::string name(reinterpret_cast<const char*>(data.data()), data.size());
  if (!export_matches(name)) {
    // NBD_OPT_EXPORT_NAME has no error reply: the server must close.
    close(fmt::format("client asked for unknown export '{}'", name));
    return;
  }
  session_.export_name = name;
  session_.transmission_flags = transmission_flags(exp_, session_.structured_replies);
  Writer w(out);
  w.u64(exp_.size).u16(session_.transmission_flags);
  if (!no_zeroes_) w.zeroes(124);
  state_ = State::kTransmission;
}

void Handshake::handle_info_or_go(std::span<const std::byte> data, std::vector<std::byte>& out) {
  Reader r(data);
  uint32_t name_len = 0;
  std::string name;
  uint16_t n_infos = 0;
  if (!r.u32(name_len) || name_len > kMaxStringLength || !r.str(name_len, name) || !r.u16(n_infos) ||
      r.left() != size_t{n_infos} * 2) {
    reply_error(out, kRepErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO request");
    return;
  }
  std::vector<uint16_t> requested(n_infos);
  for (auto& t : requested) {
    if (!r.u16(t)) {
      reply_error(out, kRepErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO request");
      return;
    }
  }
  if (!export_matches(name)) {
    reply_error(out, kRepErrUnknown, fmt::format("no export named '{}'", name));
    return;
  }

  const uint16_t flags = transmission_flags(exp_, session_.structured_replies);
  std::vector<std::byte> info;
  Writer(info).u16(kInfoExport).u64(exp_.size).u16(flags);
  reply(out, kRepInfo, as_bytes(info));

  bool sent_name = false;
  bool sent_description = false;
  for (uint16_t t : requested) {
    info.clear();
    if (t == kInfoName && !sent_name) {
      Writer(info).u16(kInfoName).str(exp_.name);
      reply(out, kRepInfo, as_bytes(info));
      sent_name = true;
    } else if (t == kInfoDescription && !sent_description && !exp_.description.empty()) {
      Writer(info).u16(kInfoDescription).str(exp_.description);
      reply(out, kRepInfo, as_bytes(info));
      sent_description = true;
    }
    // Other requests are ignored, as the protocol allows.
  }
  // Block sizes are always sent: rbdcache accepts any alignment.
  info.clear();
  Writer(info).u16(kInfoBlockSize).u32(kMinBlockSize).u32(kPreferredBlockSize).u32(kMaxPayload);
  reply(out, kRepInfo, as_bytes(info));
  reply(out, kRepAck);

  if (option_ == kOptGo) {
    session_.export_name = name;
    session_.transmission_flags = flags;
    state_ = State::kTransmission;
  }
}

void Handshake::handle_meta_context(std::span<const std::byte> data, std::vector<std::byte>& out) {
  const bool is_set = option_ == kOptSetMetaContext;
  if (is_set && !session_.structured_replies) {
    reply_error(out, kRepErrInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies first");
    return;
  }
  Reader r(data);
  uint32_t name_len = 0;
  std::string name;
  uint32_t n_queries = 0;
  if (!r.u32(name_len) || name_len > kMaxStringLength || !r.str(name_len, name) ||
      !r.u32(n_queries)) {
    reply_error(out, kRepErrInvalid, "malformed meta context request");
    return;
  }
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < n_queries; ++i) {
    uint32_t len = 0;
    std::string q;
    if (!r.u32(len) || len > kMaxStringLength || !r.str(len, q)) {
      reply_error(out, kRepErrInvalid, "malformed meta context query");
      return;
    }
    queries.push_back(std::move(q));
  }
  if (r.left() != 0) {
    reply_error(out, kRepErrInvalid, "trailing bytes in meta context request");
    return;
  }
  if (!export_matches(name)) {
    reply_error(out, kRepErrUnknown, fmt::format("no export named '{}'", name));
    return;
  }

  bool match = false;
  if (!is_set && queries.empty()) {
    match = true;  // list everything
  }
  for (const auto& q : queries) {
    if (q == kBaseAllocation || (!is_set && q == "base:")) match = true;
  }
  if (match) {
    std::vector<std::byte> payload;
    Writer(payload).u32(is_set ? kBaseAllocationId : 0).str(kBaseAllocation);
    reply(out, kRepMetaContext, as_bytes(payload));
  }
  if (is_set) session_.base_allocation = match;
  reply(out, kRepAck);
}

}  // namespace rbdcache::nbd
