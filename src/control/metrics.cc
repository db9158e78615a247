#include "control/metrics.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "nbd/server.h"
#include "util/log.h"

namespace rbdcache::control {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------
// The metric table. A metric is named rbdcache_<section>_<field> (or
// rbdcache_<field> for a top-level field), plus _total for a counter. Only
// fields listed here are exposed: a new status field needs a row here and in
// docs/metrics.md, and the unit test fails until it has one.

enum class MetricType { kGauge, kCounter };

struct MetricSpec {
  const char* section;  // "" for a top-level field
  const char* field;
  MetricType type;
  const char* help;
};

constexpr MetricType G = MetricType::kGauge;
constexpr MetricType C = MetricType::kCounter;

constexpr MetricSpec kMetrics[] = {
    {"", "format_version", G, "Version of the status document these metrics are rendered from."},
    {"", "origin_size_bytes", G, "Size of the origin image in bytes."},

    {"flush", "active", G, "1 while an operator's flush (writing back every dirty block) runs, else 0."},
    {"flush", "left_bytes", G, "Dirty bytes the running flush still has to write back."},
    {"flush", "max_rate_bytes_per_second", G,
     "Rate limit of the running flush in bytes per second; absent without one."},

    {"cache", "size_bytes", G, "Capacity of the cache device's data area in bytes."},
    {"cache", "block_size_bytes", G, "Size of one cache block in bytes."},
    {"cache", "blocks", G, "Number of blocks the cache device holds."},
    {"cache", "mapped_blocks", G, "Cache blocks holding data of the origin, clean or dirty."},
    {"cache", "used_bytes", G, "Bytes of valid origin data in the cache."},
    {"cache", "dirty_bytes", G, "Bytes in the cache that the origin does not have yet."},
    {"cache", "dirty_blocks", G, "Cache blocks holding any dirty data."},
    {"cache", "oldest_dirty_age_seconds", G,
     "Seconds the oldest dirty block has been dirty; 0 when nothing is dirty."},

    {"io", "read_hits", C, "Read requests (per cache block touched) served from the cache."},
    {"io", "read_misses", C, "Read requests (per cache block touched) that needed the origin."},
    {"io", "read_hit_ratio", G, "Share of reads served from the cache since start (0 to 1)."},
    {"io", "write_hits", C, "Writes (per cache block touched) to blocks already cached."},
    {"io", "write_misses", C, "Writes (per cache block touched) to blocks not cached."},
    {"io", "write_hit_ratio", G, "Share of writes to blocks already cached since start (0 to 1)."},
    {"io", "promotions", C, "Blocks copied into the cache."},
    {"io", "demotions", C, "Blocks evicted or dropped from the cache."},
    {"io", "bypassed_bytes", C, "Bytes sent straight to the origin, bypassing the cache."},

    {"writeback", "written_back_bytes", C, "Dirty bytes written back to the origin."},
    {"writeback", "rate_bytes_per_second", G, "Writeback speed over the last seconds in bytes per second."},
    {"writeback", "origin_write_bandwidth_bytes_per_second", G,
     "Write bandwidth the origin sustained while writeback ran, in bytes per second."},
    {"writeback", "flush_eta_seconds", G,
     "Estimated seconds until every dirty byte is written back."},
    {"writeback", "errors", C, "Failed writeback attempts (each is retried; the data stays dirty)."},

    {"health", "failed", G,
     "1 when the metadata device failed and the cache is read-only, else 0."},
    {"health", "degraded", G,
     "1 when some dirty data cannot be read after cache device errors, else 0."},
    {"health", "unknown_bytes", G, "Dirty bytes that cannot be read after cache device errors."},
    {"health", "cache_read_errors", C, "Cache device read errors."},
    {"health", "cache_write_errors", C, "Cache device write errors."},

    {"metadata", "log_size_bytes", G, "Size of the metadata log in bytes."},
    {"metadata", "log_usage_ratio", G,
     "Share of the metadata log's usable segments holding live metadata (0 to 1)."},
    {"metadata", "segments", G, "Segments of the metadata log."},
    {"metadata", "free_segments", G, "Metadata log segments free or erasable now."},
    {"metadata", "erase_count_min", G, "Fewest erases of any metadata log segment."},
    {"metadata", "erase_count_mean", G, "Mean erases per metadata log segment."},
    {"metadata", "erase_count_max", G, "Most erases of any metadata log segment."},
    {"metadata", "commits", C, "Metadata log commits."},

    {"memory", "mapping_bytes", G, "Memory used by the mapping table and the cache policy in bytes."},
    {"memory", "mapping_bytes_per_block", G, "Mapping memory per cache block in bytes."},

    {"ownership", "shared_image", G, "1 when the origin is an RBD image shared with other hosts, else 0."},
    {"ownership", "exclusive_lock", G,
     "1 while this cache holds the RBD image's exclusive lock, else 0."},
    {"ownership", "cache_epoch", G,
     "Attach counter of the RBD image, as recorded in the image and the cache."},
};

// The modes rbdcache_mode has a series for, even when not the current one.
constexpr const char* kModes[] = {"writeback", "writethrough", "passthrough", "uncached"};

std::string metric_name(const MetricSpec& m) {
  std::string name = "rbdcache_";
  if (m.section[0] != '\0') {
    name += m.section;
    name += '_';
  }
  name += m.field;
  if (m.type == MetricType::kCounter) name += "_total";
  return name;
}

bool in_table(std::string_view section, std::string_view field) {
  return std::any_of(std::begin(kMetrics), std::end(kMetrics), [&](const MetricSpec& m) {
    return section == m.section && field == m.field;
  });
}

// The field's value, or nullptr when the document or section lacks it.
const json* find_field(const json& doc, std::string_view section, std::string_view field) {
  if (!doc.is_object()) return nullptr;
  const json* obj = &doc;
  if (!section.empty()) {
    auto s = doc.find(std::string(section));
    if (s == doc.end() || !s->is_object()) return nullptr;
    obj = &*s;
  }
  auto f = obj->find(std::string(field));
  return f == obj->end() ? nullptr : &*f;
}

const std::string* find_string(const json& doc, std::string_view section, std::string_view field) {
  const json* v = find_field(doc, section, field);
  return v != nullptr && v->is_string() ? &v->get_ref<const std::string&>() : nullptr;
}

// A sample value in exposition syntax; nullopt for null and non-numbers.
std::optional<std::string> sample_value(const json& v) {
  if (v.is_boolean()) return std::string(v.get<bool>() ? "1" : "0");
  if (v.is_number_unsigned()) return fmt::format("{}", v.get<uint64_t>());
  if (v.is_number_integer()) return fmt::format("{}", v.get<int64_t>());
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isnan(d)) return std::string("NaN");
    if (std::isinf(d)) return std::string(d > 0 ? "+Inf" : "-Inf");
    return fmt::format("{}", d);
  }
  return std::nullopt;
}

// Label values escape backslash, double quote and newline.
std::string escape_label_value(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    switch (ch) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += ch;
    }
  }
  return out;
}

// HELP text escapes backslash and newline.
std::string escape_help(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '\n') {
      out += "\\n";
    } else {
      out += ch;
    }
  }
  return out;
}

void family_header(std::string& out, std::string_view name, std::string_view help, MetricType type) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name,
                     type == MetricType::kCounter ? "counter" : "gauge");
}

// JSON pointer reference token escaping (RFC 6901).
std::string pointer_token(std::string_view key) {
  std::string out;
  for (char ch : key) {
    if (ch == '~') {
      out += "~0";
    } else if (ch == '/') {
      out += "~1";
    } else {
      out += ch;
    }
  }
  return out;
}

bool is_numeric_leaf(const json& v) { return v.is_number() || v.is_boolean(); }

// Appends the pointer of every numeric or boolean leaf under `v`.
void collect_leaves(const json& v, const std::string& pointer, std::vector<std::string>& out) {
  if (is_numeric_leaf(v)) {
    out.push_back(pointer);
  } else if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      collect_leaves(it.value(), pointer + "/" + pointer_token(it.key()), out);
    }
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) collect_leaves(v[i], fmt::format("{}/{}", pointer, i), out);
  }
}

}  // namespace

std::string prometheus_text(const nlohmann::json& status) {
  std::string out;
  if (!status.is_object()) return out;

  if (const std::string* mode = find_string(status, "", "mode")) {
    family_header(out, "rbdcache_mode", "Cache mode: 1 for the current mode, 0 for the others.",
                  MetricType::kGauge);
    bool known = false;
    for (const char* m : kModes) {
      known = known || *mode == m;
      out += fmt::format("rbdcache_mode{{mode=\"{}\"}} {}\n", m, *mode == m ? 1 : 0);
    }
    if (!known) out += fmt::format("rbdcache_mode{{mode=\"{}\"}} 1\n", escape_label_value(*mode));
  }

  std::string labels;
  auto add_label = [&labels](std::string_view name, const std::string* value) {
    if (value == nullptr) return;
    if (!labels.empty()) labels += ',';
    labels += fmt::format("{}=\"{}\"", name, escape_label_value(*value));
  };
  add_label("origin", find_string(status, "", "origin"));
  add_label("cache_uuid", find_string(status, "ownership", "cache_uuid"));
  family_header(out, "rbdcache_info", "Identity of the origin and the cache; always 1.",
                MetricType::kGauge);
  out += labels.empty() ? std::string("rbdcache_info 1\n")
                        : fmt::format("rbdcache_info{{{}}} 1\n", labels);

  for (const MetricSpec& m : kMetrics) {
    const json* v = find_field(status, m.section, m.field);
    if (v == nullptr) continue;
    std::optional<std::string> value = sample_value(*v);
    if (!value) continue;
    std::string name = metric_name(m);
    family_header(out, name, m.help, m.type);
    out += fmt::format("{} {}\n", name, *value);
  }
  return out;
}

std::vector<std::string> unexposed_fields(const nlohmann::json& status) {
  std::vector<std::string> out;
  if (!status.is_object()) return out;
  for (auto it = status.begin(); it != status.end(); ++it) {
    const std::string top = "/" + pointer_token(it.key());
    const json& v = it.value();
    if (is_numeric_leaf(v)) {
      if (!in_table("", it.key())) out.push_back(top);
    } else if (v.is_object()) {
      for (auto f = v.begin(); f != v.end(); ++f) {
        const std::string pointer = top + "/" + pointer_token(f.key());
        if (is_numeric_leaf(f.value())) {
          if (!in_table(it.key(), f.key())) out.push_back(pointer);
        } else {
          collect_leaves(f.value(), pointer, out);  // the table has no deeper fields
        }
      }
    } else {
      collect_leaves(v, top, out);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// The HTTP server.
//
// Every connection is a Conn owned by State::conns. It has at most one
// operation (recv or sendmsg) in flight; that operation's callback holds a
// shared_ptr to the State and to the Conn, so neither dangles when a
// completion arrives after stop(). A connection goes through three phases:
//   kRequest  - recv until the blank line that ends the headers;
//   kResponse - sendmsg until the whole response is out, then shutdown(WR);
//   kLinger   - recv and drop until the client closes, so that closing with
//               unread bytes does not reset the connection under the reply.
// Deadlines: one timerfd, read through the reactor, set to the earliest
// deadline of any connection; when it fires, every expired connection is
// shutdown(), which ends its pending operation, and the connection is closed
// in that operation's callback. Unlike a ring timeout, the timerfd can be made
// to fire at once, so stop() never waits for a deadline.

namespace {

using Clock = std::chrono::steady_clock;

struct Conn {
  enum class Phase { kRequest, kResponse, kLinger };

  uint64_t id = 0;
  int fd = -1;
  Phase phase = Phase::kRequest;
  std::vector<char> in;  // request bytes, max_request_bytes long
  size_t used = 0;       // bytes of `in` received
  std::string out;       // the response
  size_t sent = 0;
  iovec iov{};
  msghdr msg{};
  Clock::time_point deadline;
  bool op_pending = false;  // a recv or sendmsg is in flight
  bool shut = false;        // shut down; closed when the pending op completes
};

// Offset just past the blank line ending the headers in in[0, used), searching
// from `from`; nullopt if not there yet. Accepts CRLF and bare LF.
std::optional<size_t> find_header_end(const std::vector<char>& in, size_t from, size_t used) {
  for (size_t i = from; i < used; ++i) {
    if (in[i] != '\n') continue;
    if (i + 1 < used && in[i + 1] == '\n') return i + 2;
    if (i + 2 < used && in[i + 1] == '\r' && in[i + 2] == '\n') return i + 3;
  }
  return std::nullopt;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr;
  });
}

bool is_target(std::string_view s) {
  if (s.empty() || s.front() != '/') return false;
  return std::all_of(s.begin(), s.end(), [](char ch) {
    auto u = static_cast<unsigned char>(ch);
    return u > 0x20 && u != 0x7f;
  });
}

bool is_http1(std::string_view v) {
  return v.size() == 8 && v.substr(0, 7) == "HTTP/1." && v[7] >= '0' && v[7] <= '9';
}

constexpr std::string_view kIndexHtml =
    "<!DOCTYPE html>\n<html><head><title>rbdcache</title></head>\n"
    "<body><h1>rbdcache</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

constexpr const char* kPlain = "text/plain; charset=utf-8";

}  // namespace

struct MetricsServer::State : std::enable_shared_from_this<State> {
  State(io::Reactor& reactor, std::function<json()> snap, MetricsServerOptions o)
      : r(reactor), snapshot(std::move(snap)), opt(o) {}

  // Runs when nothing refers to the state any more, so no operation is in
  // flight on these descriptors.
  ~State() {
    if (listen_fd >= 0) ::close(listen_fd);
    if (timer_fd >= 0) ::close(timer_fd);
    for (auto& [id, c] : conns) {
      if (c->fd >= 0) ::close(c->fd);
    }
  }

  // --- Reactor thread only, from here on. ---
  void begin();
  void arm_accept();
  void on_accept(int res);
  void close_listen();
  void adopt(int fd);
  void post_recv(const std::shared_ptr<Conn>& c);
  void on_recv(const std::shared_ptr<Conn>& c, int res);
  void handle_request(const std::shared_ptr<Conn>& c, std::string_view head);
  void serve_metrics(const std::shared_ptr<Conn>& c, bool head_only);
  void respond(const std::shared_ptr<Conn>& c, int code, std::string_view reason,
               std::string_view content_type, std::string_view body, bool head_only,
               std::string_view extra_headers = {});
  void post_send(const std::shared_ptr<Conn>& c);
  void on_sent(const std::shared_ptr<Conn>& c, int res);
  void shut(const std::shared_ptr<Conn>& c);
  void finish(const std::shared_ptr<Conn>& c);
  void schedule_timer(Clock::time_point when);
  void set_timer(const itimerspec& its, int flags);
  void on_timer(int res);
  void shutdown_all();

  io::Reactor& r;
  const std::function<json()> snapshot;
  const MetricsServerOptions opt;

  int listen_fd = -1;
  int timer_fd = -1;
  // Reactor thread only:
  bool accept_pending = false;  // an accept, or the back-off before the next one
  uint64_t timer_buf = 0;
  bool timer_pending = false;  // a read of timer_fd is in flight
  Clock::time_point timer_expiry;
  std::unordered_map<uint64_t, std::shared_ptr<Conn>> conns;
  uint64_t next_id = 1;
  bool shut_down = false;  // shutdown_all() has run

  // Set by stop(), from any thread. Off r's thread it is set under
  // snapshot_mu, which serve_metrics() holds while calling `snapshot`.
  std::atomic<bool> stopped{false};
  std::mutex snapshot_mu;
};

void MetricsServer::State::begin() {
  if (shut_down || listen_fd < 0) return;
  arm_accept();
}

void MetricsServer::State::arm_accept() {
  accept_pending = true;
  r.accept(listen_fd, [self = shared_from_this()](int res) { self->on_accept(res); });
}

void MetricsServer::State::on_accept(int res) {
  accept_pending = false;
  if (shut_down) {
    if (res >= 0) r.close(res);
    close_listen();
    return;
  }
  if (res >= 0) {
    adopt(res);
  } else if (res != -EINTR && res != -EAGAIN && res != -ECONNABORTED) {
    // Out of descriptors or worse: back off instead of spinning.
    log::warn("metrics: accept failed: {}", std::strerror(-res));
    accept_pending = true;
    r.timeout(100'000'000, [self = shared_from_this()](int) {
      self->accept_pending = false;
      if (self->shut_down) {
        self->close_listen();
      } else {
        self->arm_accept();
      }
    });
    return;
  }
  arm_accept();
}

void MetricsServer::State::close_listen() {
  if (listen_fd < 0) return;
  r.close(listen_fd);
  listen_fd = -1;
}

void MetricsServer::State::adopt(int fd) {
  if (conns.size() >= opt.max_connections) {
    log::debug("metrics: {} connections open; closing a new one", conns.size());
    r.close(fd);
    return;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto c = std::make_shared<Conn>();
  c->id = next_id++;
  c->fd = fd;
  c->in.resize(opt.max_request_bytes);
  c->deadline = Clock::now() + opt.request_timeout;
  conns.emplace(c->id, c);
  schedule_timer(c->deadline);
  post_recv(c);
}

void MetricsServer::State::post_recv(const std::shared_ptr<Conn>& c) {
  if (c->phase == Conn::Phase::kLinger) c->used = 0;  // drop what the client sends
  c->op_pending = true;
  auto room = static_cast<uint32_t>(c->in.size() - c->used);
  r.recv(c->fd, c->in.data() + c->used, room,
         [self = shared_from_this(), c](int res) { self->on_recv(c, res); });
}

void MetricsServer::State::on_recv(const std::shared_ptr<Conn>& c, int res) {
  c->op_pending = false;
  if (c->shut || res == 0 || (res < 0 && res != -EINTR && res != -EAGAIN)) {
    finish(c);  // shut down, end of stream or a socket error
    return;
  }
  if (res < 0 || c->phase == Conn::Phase::kLinger) {
    post_recv(c);
    return;
  }
  size_t from = c->used >= 3 ? c->used - 3 : 0;
  c->used += static_cast<size_t>(res);
  std::optional<size_t> end = find_header_end(c->in, from, c->used);
  if (end) {
    handle_request(c, std::string_view(c->in.data(), *end));
  } else if (c->used == c->in.size()) {
    respond(c, 431, "Request Header Fields Too Large", kPlain,
            fmt::format("request headers exceed {} bytes\n", opt.max_request_bytes), false);
  } else {
    post_recv(c);
  }
}

void MetricsServer::State::handle_request(const std::shared_ptr<Conn>& c, std::string_view head) {
  std::string_view line = head.substr(0, head.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) {
    respond(c, 400, "Bad Request", kPlain, "malformed request line\n", false);
    return;
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!is_token(method) || !is_target(target) || !is_http1(version)) {
    respond(c, 400, "Bad Request", kPlain, "malformed request line\n", false);
    return;
  }
  bool head_only = method == "HEAD";
  if (method != "GET" && !head_only) {
    respond(c, 405, "Method Not Allowed", kPlain, "only GET and HEAD are served\n", false,
            "Allow: GET, HEAD\r\n");
    return;
  }
  std::string_view path = target.substr(0, target.find('?'));
  if (path == "/metrics") {
    serve_metrics(c, head_only);
  } else if (path == "/") {
    respond(c, 200, "OK", "text/html; charset=utf-8", kIndexHtml, head_only);
  } else {
    respond(c, 404, "Not Found", kPlain, "not found; metrics are at /metrics\n", head_only);
  }
}

void MetricsServer::State::serve_metrics(const std::shared_ptr<Conn>& c, bool head_only) {
  std::string body;
  std::string error;
  {
    std::lock_guard<std::mutex> lock(snapshot_mu);
    if (stopped.load()) {
      error = "stopping";
    } else {
      // `snapshot` is the caller's code; a failure there answers this scrape
      // with 500 rather than ending the reactor thread.
      try {
        body = prometheus_text(snapshot());
      } catch (const std::exception& e) {
        error = e.what();
      } catch (...) {
        error = "unknown error";
      }
    }
  }
  if (!error.empty()) {
    if (error != "stopping") log::warn("metrics: status snapshot failed: {}", error);
    respond(c, error == "stopping" ? 503 : 500,
            error == "stopping" ? "Service Unavailable" : "Internal Server Error", kPlain,
            fmt::format("no metrics: {}\n", error), head_only);
    return;
  }
  respond(c, 200, "OK", kPrometheusContentType, body, head_only);
}

void MetricsServer::State::respond(const std::shared_ptr<Conn>& c, int code,
                                   std::string_view reason, std::string_view content_type,
                                   std::string_view body, bool head_only,
                                   std::string_view extra_headers) {
  c->out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n"
      "{}Connection: close\r\n\r\n",
      code, reason, content_type, body.size(), extra_headers);
  if (!head_only) c->out += body;
  c->sent = 0;
  c->phase = Conn::Phase::kResponse;
  c->deadline = Clock::now() + opt.request_timeout;
  schedule_timer(c->deadline);
  post_send(c);
}

void MetricsServer::State::post_send(const std::shared_ptr<Conn>& c) {
  c->iov.iov_base = c->out.data() + c->sent;
  c->iov.iov_len = c->out.size() - c->sent;
  c->msg = {};
  c->msg.msg_iov = &c->iov;
  c->msg.msg_iovlen = 1;
  c->op_pending = true;
  r.sendmsg(c->fd, &c->msg, [self = shared_from_this(), c](int res) { self->on_sent(c, res); });
}

void MetricsServer::State::on_sent(const std::shared_ptr<Conn>& c, int res) {
  c->op_pending = false;
  if (c->shut || res == 0 || (res < 0 && res != -EINTR && res != -EAGAIN)) {
    finish(c);
    return;
  }
  if (res > 0) c->sent += static_cast<size_t>(res);
  if (c->sent < c->out.size()) {
    post_send(c);
    return;
  }
  // All sent: signal the end, then wait for the client to close.
  ::shutdown(c->fd, SHUT_WR);
  c->phase = Conn::Phase::kLinger;
  post_recv(c);
}

void MetricsServer::State::shut(const std::shared_ptr<Conn>& c) {
  if (c->shut) return;
  c->shut = true;
  if (c->op_pending) {
    ::shutdown(c->fd, SHUT_RDWR);  // the pending recv or sendmsg returns
  } else {
    finish(c);
  }
}

void MetricsServer::State::finish(const std::shared_ptr<Conn>& c) {
  if (c->fd >= 0) {
    r.close(c->fd);
    c->fd = -1;
  }
  conns.erase(c->id);
}

void MetricsServer::State::set_timer(const itimerspec& its, int flags) {
  if (::timerfd_settime(timer_fd, flags, &its, nullptr) != 0) {
    log::warn("metrics: timerfd_settime: {}", std::strerror(errno));
  }
}

void MetricsServer::State::schedule_timer(Clock::time_point when) {
  if (timer_fd < 0 || shut_down) return;
  if (timer_pending && when >= timer_expiry) return;
  auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch());
  itimerspec its{};
  its.it_value.tv_sec = static_cast<time_t>(since_epoch.count() / 1'000'000'000);
  its.it_value.tv_nsec = static_cast<long>(since_epoch.count() % 1'000'000'000);
  if (its.it_value.tv_sec <= 0 && its.it_value.tv_nsec <= 0) its.it_value.tv_nsec = 1;
  // steady_clock is CLOCK_MONOTONIC, the timerfd's clock.
  set_timer(its, TFD_TIMER_ABSTIME);
  timer_expiry = when;
  if (!timer_pending) {
    timer_pending = true;
    r.read(timer_fd, &timer_buf, sizeof(timer_buf), 0,
           [self = shared_from_this()](int res) { self->on_timer(res); });
  }
}

void MetricsServer::State::on_timer(int res) {
  timer_pending = false;
  if (shut_down) {
    r.close(timer_fd);
    timer_fd = -1;
    return;
  }
  if (res < 0 && res != -EINTR && res != -EAGAIN) {
    // Should not happen; without a working timer, deadlines are not enforced.
    log::error("metrics: reading the deadline timer failed: {}; idle clients are no longer dropped",
               std::strerror(-res));
    r.close(timer_fd);
    timer_fd = -1;
    return;
  }
  Clock::time_point now = Clock::now();
  std::vector<std::shared_ptr<Conn>> expired;
  std::optional<Clock::time_point> next;
  for (auto& [id, c] : conns) {
    if (c->shut) continue;
    if (c->deadline <= now) {
      expired.push_back(c);
    } else if (!next || c->deadline < *next) {
      next = c->deadline;
    }
  }
  for (auto& c : expired) {
    log::debug("metrics: dropping connection {} after {} ms without a complete exchange", c->id,
               opt.request_timeout.count());
    shut(c);
  }
  if (next) schedule_timer(*next);
}

void MetricsServer::State::shutdown_all() {
  if (shut_down) return;
  shut_down = true;
  if (listen_fd >= 0) {
    if (accept_pending) {
      ::shutdown(listen_fd, SHUT_RDWR);  // the pending accept fails; its callback closes
    } else {
      close_listen();
    }
  }
  std::vector<std::shared_ptr<Conn>> all;
  all.reserve(conns.size());
  for (auto& [id, c] : conns) all.push_back(c);
  for (auto& c : all) shut(c);
  if (timer_fd >= 0) {
    if (timer_pending) {
      itimerspec now{};
      now.it_value.tv_nsec = 1;  // fire at once; on_timer closes it
      set_timer(now, 0);
    } else {
      r.close(timer_fd);
      timer_fd = -1;
    }
  }
}

// ---------------------------------------------------------------------------

MetricsServer::MetricsServer(std::shared_ptr<State> state, uint16_t port, std::string url)
    : state_(std::move(state)), port_(port), url_(std::move(url)) {}

MetricsServer::~MetricsServer() { stop(); }

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(io::Reactor& r,
                                                           const std::string& listen,
                                                           std::function<nlohmann::json()> snapshot,
                                                           MetricsServerOptions options) {
  if (!snapshot) return Status::invalid_argument("metrics: no status snapshot function");
  if (options.max_request_bytes < 64 || options.max_request_bytes > (1u << 20) ||
      options.request_timeout.count() <= 0 || options.max_connections == 0) {
    return Status::invalid_argument("metrics: bad server options");
  }
  auto addrs = nbd::resolve_listen_address(listen, "--metrics");
  if (!addrs.is_ok()) return addrs.status();
  addrinfo* res = addrs.value().get();
  std::string host, port;
  RBDCACHE_RETURN_IF_ERROR(nbd::parse_listen_address(listen, host, port));

  auto state = std::make_shared<State>(r, std::move(snapshot), options);
  int err = 0;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      state->listen_fd = fd;
      break;
    }
    err = errno;
    ::close(fd);
  }
  if (state->listen_fd < 0) {
    return Status::system_error(err, fmt::format("cannot listen for metrics on {}:{}", host, port));
  }

  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (::getsockname(state->listen_fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return Status::system_error(errno, "getsockname of the metrics socket");
  }
  char addr[INET6_ADDRSTRLEN] = {};
  uint16_t bound_port = 0;
  std::string url;
  if (bound.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&bound);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof(addr));
    bound_port = ntohs(in6->sin6_port);
    url = fmt::format("http://[{}]:{}/metrics", addr, bound_port);
  } else {
    const auto* in4 = reinterpret_cast<const sockaddr_in*>(&bound);
    ::inet_ntop(AF_INET, &in4->sin_addr, addr, sizeof(addr));
    bound_port = ntohs(in4->sin_port);
    url = fmt::format("http://{}:{}/metrics", addr, bound_port);
  }

  state->timer_fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (state->timer_fd < 0) return Status::system_error(errno, "timerfd_create for metrics");

  // The ring may only be touched on r's thread: accepting starts there.
  r.post([state] { state->begin(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(state, bound_port, std::move(url)));
}

void MetricsServer::stop() {
  if (!state_ || state_->stopped.load()) return;
  io::Reactor& r = state_->r;
  if (r.on_reactor_thread()) {
    state_->stopped.store(true);
    state_->shutdown_all();
    return;
  }
  {
    // Waits for a snapshot in progress; none starts after this.
    std::lock_guard<std::mutex> lock(state_->snapshot_mu);
    if (state_->stopped.exchange(true)) return;
  }
  r.post([s = state_] { s->shutdown_all(); });
}

}  // namespace rbdcache::control
