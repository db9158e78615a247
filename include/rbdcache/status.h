// Status and Result<T>: the error channel of every I/O path in rbdcache.
//
// Errors are values, never exceptions. A Status carries a positive errno value
// (EIO, EINVAL, ENOSPC, ...) and a human-readable message that says what failed
// and where. errno is the lingua franca because io_uring, librbd and the NBD
// protocol all speak it; NBD error codes are derived from it in exactly one
// place (nbd/wire.h: nbd_error_from_errno).
//
// Both types are [[nodiscard]]: dropping one on the floor is a compile error
// under -Werror. A deliberate ignore is spelled `status.ignore_error();` so it
// can be grepped for.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace rbdcache {

class [[nodiscard]] Status {
 public:
  // The default Status is success.
  Status() = default;

  static Status ok() { return Status(); }

  // `err` must be a positive errno value.
  static Status from_errno(int err, std::string message) {
    return Status(err == 0 ? EIO : err, std::move(message));
  }

  // Convenience: `what` followed by strerror(err).
  static Status system_error(int err, std::string_view what) {
    return from_errno(err, fmt::format("{}: {}", what, std::strerror(err)));
  }

  static Status invalid_argument(std::string message) { return Status(EINVAL, std::move(message)); }
  static Status corruption(std::string message) { return Status(EUCLEAN, std::move(message)); }
  static Status not_supported(std::string message) { return Status(ENOTSUP, std::move(message)); }
  static Status io_error(std::string message) { return Status(EIO, std::move(message)); }

  bool is_ok() const { return err_ == 0; }
  explicit operator bool() const { return is_ok(); }

  // Positive errno; 0 when ok.
  int err() const { return err_; }
  const std::string& message() const { return message_; }

  std::string to_string() const {
    if (is_ok()) return "ok";
    return message_.empty() ? std::string(std::strerror(err_)) : message_;
  }

  // Prefixes the message with context, keeping the errno.
  Status with_context(std::string_view context) const {
    if (is_ok()) return *this;
    return Status(err_, fmt::format("{}: {}", context, message_));
  }

  // Marks a deliberate ignore.
  void ignore_error() const {}

 private:
  Status(int err, std::string message) : err_(err), message_(std::move(message)) {}

  int err_ = 0;
  std::string message_;
};

// Result<T> holds either a value or a failed Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).is_ok()) {
      v_ = Status::io_error("Result constructed from an ok Status without a value");
    }
  }

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }

  // Precondition: is_ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

  // Ok when a value is held.
  Status status() const { return is_ok() ? Status::ok() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

// Propagates a failed Status from an expression returning Status.
#define RBDCACHE_RETURN_IF_ERROR(expr)        \
  do {                                        \
    ::rbdcache::Status _st = (expr);          \
    if (!_st.is_ok()) return _st;             \
  } while (0)

}  // namespace rbdcache
