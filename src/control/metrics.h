// Prometheus metrics: the status document rendered as text exposition format
// 0.0.4, served over HTTP at GET /metrics (`rbdcache serve --metrics`).
//
// The metric names, their types and what they mean are listed in
// docs/metrics.md. Names come from one table in metrics.cc, keyed by the
// status document's section and field; a numeric field that is not in the
// table is not exposed (unexposed_fields() lists such fields so that a test
// catches them).
//
// The HTTP server is deliberately small: one request per connection, answered
// with `Connection: close`; requests are at most `max_request_bytes` of
// request line and headers (431 beyond that, 400 for anything that is not an
// HTTP/1.x request line); a connection that has not sent a whole request
// within `request_timeout` is closed. GET and HEAD are served: /metrics is
// the exposition, / a short HTML pointer to it, any other path 404; any other
// method gets 405. All socket I/O goes through the given io::Reactor.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/reactor.h"
#include "rbdcache/status.h"

namespace rbdcache::control {

// Renders the status document as Prometheus text exposition (format 0.0.4).
// Fields that are null, missing or of an unexpected type are omitted, with
// their HELP and TYPE lines; fields the table does not know are skipped. The
// output ends with a newline. Never throws.
std::string prometheus_text(const nlohmann::json& status);

// The JSON pointers ("/io/read_hits") of the numeric and boolean leaves of
// `status` that prometheus_text() does not expose. Empty when every number in
// the document has a metric.
std::vector<std::string> unexposed_fields(const nlohmann::json& status);

// The HTTP content type of prometheus_text()'s output.
inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

struct MetricsServerOptions {
  // A connection must deliver its whole request within this time after it is
  // accepted, and then take our response (and close) within this time again;
  // otherwise it is shut down.
  std::chrono::milliseconds request_timeout{10'000};
  // Largest request line plus headers; a larger request gets 431.
  size_t max_request_bytes = 8192;
  // Connections served at once; more are closed as soon as they are accepted.
  size_t max_connections = 128;
};

class MetricsServer {
 public:
  // Binds `listen` ("PORT", ":PORT", "ADDR:PORT" or "[V6]:PORT", as
  // nbd::parse_listen_address; loopback without ADDR, port 0 picks a free
  // port), listens, and starts accepting on `r`. May be called from any
  // thread, before or while `r` runs; accepting begins on r's thread.
  // `snapshot` is called on r's thread, once for each scrape of /metrics, and
  // returns the status document; it may throw (the scrape then gets 500).
  // `r` must outlive the server, or stop() must have been called and `r` run
  // until its operations completed.
  static Result<std::unique_ptr<MetricsServer>> start(io::Reactor& r, const std::string& listen,
                                                      std::function<nlohmann::json()> snapshot,
                                                      MetricsServerOptions options = {});

  // Calls stop().
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The bound TCP port (the real one when 0 was asked for). Any thread.
  uint16_t port() const { return port_; }
  // The scrape URL, e.g. http://127.0.0.1:9150/metrics or
  // http://[::1]:9150/metrics. Any thread.
  std::string url() const { return url_; }

  // Stops accepting and shuts every connection down; idempotent. Any thread.
  // When it returns, `snapshot` is neither running nor called again (unless
  // stop() is called from inside `snapshot` itself, on r's thread). On r's
  // thread the sockets are shut down at once; from another thread that work
  // is post()ed to `r`, so `r` must keep running until it is done: after
  // stop(), every operation of this server completes promptly, and
  // Reactor::stop() followed by joining r's thread is safe.
  void stop();

 private:
  struct State;
  MetricsServer(std::shared_ptr<State> state, uint16_t port, std::string url);

  std::shared_ptr<State> state_;
  uint16_t port_;
  std::string url_;
};

}  // namespace rbdcache::control
