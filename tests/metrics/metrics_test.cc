// Tests for the Prometheus metrics (control/metrics.h): the text exposition of
// a status document, and the HTTP server on a real reactor thread, fetched
// over real TCP sockets.
#include "control/metrics.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../unit/io_test_util.h"

namespace rbdcache::control {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using testing::ReactorThread;

// A status document with every field of docs/status.md, each set to a
// number (or a boolean) so that every one of them must show up.
// When the status document gains a field, add it here: the
// EveryNumericLeafOfTheSampleIsExposed test then fails until the metric
// table in metrics.cc (and docs/metrics.md) has it.
json sample_status() {
  return json::parse(R"({
    "format_version": 1,
    "origin": "rbd:rbd/vm1",
    "origin_size_bytes": 10737418240,
    "mode": "writeback",
    "flush": {"active": true, "left_bytes": 4096, "max_rate_bytes_per_second": 104857600},
    "cache": {"size_bytes": 8589934592, "block_size_bytes": 65536, "blocks": 131072,
              "mapped_blocks": 1000, "used_bytes": 65536000, "dirty_bytes": 1310720,
              "dirty_blocks": 20, "oldest_dirty_age_seconds": 12.5},
    "io": {"read_hits": 300, "read_misses": 100, "read_hit_ratio": 0.75,
           "write_hits": 40, "write_misses": 60, "write_hit_ratio": 0.4,
           "promotions": 1000, "demotions": 3, "bypassed_bytes": 8192},
    "writeback": {"written_back_bytes": 7340032, "rate_bytes_per_second": 52428800,
                  "origin_write_bandwidth_bytes_per_second": 209715200,
                  "flush_eta_seconds": 0.025, "errors": 2},
    "metadata": {"log_size_bytes": 16777216, "log_usage_ratio": 0.0625, "segments": 16,
                 "free_segments": 14, "erase_count_min": 0, "erase_count_mean": 1.5,
                 "erase_count_max": 4, "commits": 10233},
    "memory": {"mapping_bytes": 4194304, "mapping_bytes_per_block": 32},
    "ownership": {"cache_uuid": "8a6f2a0e-1f7c-4b8e-9a53-2f9c1d7e5b11", "shared_image": true,
                  "exclusive_lock": true, "cache_epoch": 3}
  })");
}

// ---------------------------------------------------------------------------
// A strict reader of the text exposition format, enough to check what
// prometheus_text() writes.

struct Family {
  std::string help;
  std::string type;
  bool has_help = false;
  bool has_type = false;
  bool has_samples = false;
};

struct Exposition {
  std::map<std::string, Family> families;
  // "name{labels}" (labels as written) -> value text.
  std::map<std::string, std::string> series;
  std::vector<std::string> errors;

  bool has(const std::string& series_key) const { return series.count(series_key) != 0; }
  std::string value(const std::string& series_key) const {
    auto it = series.find(series_key);
    return it == series.end() ? std::string("<absent>") : it->second;
  }
};

bool is_metric_name(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == ':')) {
    return false;
  }
  for (char ch : s) {
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == ':')) return false;
  }
  return true;
}

bool is_label_name(const std::string& s) {
  return is_metric_name(s) && s.find(':') == std::string::npos;
}

// Parses the label set "{a="x",b="y"}" at text[pos] (just past '{'); returns
// the position past '}' or npos.
size_t parse_labels(const std::string& text, size_t pos, std::map<std::string, std::string>& labels) {
  while (pos < text.size() && text[pos] != '}') {
    size_t eq = text.find('=', pos);
    if (eq == std::string::npos || eq + 1 >= text.size() || text[eq + 1] != '"') return std::string::npos;
    std::string name = text.substr(pos, eq - pos);
    if (!is_label_name(name) || labels.count(name) != 0) return std::string::npos;
    std::string value;
    size_t i = eq + 2;
    for (; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\n') return std::string::npos;
      if (text[i] == '\\') {
        if (++i >= text.size()) return std::string::npos;
        if (text[i] == 'n') {
          value += '\n';
        } else if (text[i] == '\\' || text[i] == '"') {
          value += text[i];
        } else {
          return std::string::npos;
        }
      } else {
        value += text[i];
      }
    }
    if (i >= text.size()) return std::string::npos;
    labels[name] = value;
    pos = i + 1;
    if (pos < text.size() && text[pos] == ',') ++pos;
  }
  return pos < text.size() ? pos + 1 : std::string::npos;
}

Exposition parse_exposition(const std::string& text) {
  Exposition e;
  if (!text.empty() && text.back() != '\n') e.errors.push_back("does not end with a newline");
  size_t start = 0;
  std::string last_family;
  std::set<std::string> finished;  // families whose samples must not appear again
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(start, nl - start);
    start = nl + 1;
    auto fail = [&](const std::string& why) { e.errors.push_back(why + ": '" + line + "'"); };
    if (line.empty()) {
      fail("empty line");
      continue;
    }
    if (line[0] == '#') {
      bool help = line.rfind("# HELP ", 0) == 0;
      bool type = line.rfind("# TYPE ", 0) == 0;
      if (!help && !type) {
        fail("unexpected comment");
        continue;
      }
      std::string rest = line.substr(7);
      size_t sp = rest.find(' ');
      std::string name = rest.substr(0, sp);
      std::string arg = sp == std::string::npos ? "" : rest.substr(sp + 1);
      if (!is_metric_name(name)) fail("bad metric name");
      Family& f = e.families[name];
      if (f.has_samples) fail("HELP or TYPE after samples");
      if (help) {
        if (f.has_help) fail("second HELP");
        f.has_help = true;
        f.help = arg;
      } else {
        if (f.has_type) fail("second TYPE");
        if (arg != "counter" && arg != "gauge") fail("type other than counter or gauge");
        f.has_type = true;
        f.type = arg;
      }
      continue;
    }
    size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string::npos) {
      fail("sample without a value");
      continue;
    }
    std::string name = line.substr(0, name_end);
    if (!is_metric_name(name)) fail("bad metric name");
    std::map<std::string, std::string> labels;
    size_t pos = name_end;
    if (line[pos] == '{') {
      pos = parse_labels(line, pos + 1, labels);
      if (pos == std::string::npos) {
        fail("bad label set");
        continue;
      }
    }
    if (pos >= line.size() || line[pos] != ' ') {
      fail("no space before the value");
      continue;
    }
    std::string value = line.substr(pos + 1);
    char* end = nullptr;
    std::strtod(value.c_str(), &end);
    if (value.empty() || end != value.c_str() + value.size()) fail("value is not a number");
    auto fam = e.families.find(name);
    if (fam == e.families.end() || !fam->second.has_type || !fam->second.has_help) {
      fail("sample without HELP and TYPE");
    } else {
      if (fam->second.type == "counter" && name.size() >= 6 &&
          name.compare(name.size() - 6, 6, "_total") != 0) {
        fail("counter not named _total");
      }
      fam->second.has_samples = true;
    }
    if (name != last_family) {
      if (finished.count(name) != 0) fail("samples of a family are not together");
      if (!last_family.empty()) finished.insert(last_family);
      last_family = name;
    }
    std::string key = line.substr(0, pos);
    if (e.series.count(key) != 0) fail("duplicate series");
    e.series[key] = value;
  }
  return e;
}

Exposition render(const json& doc) {
  Exposition e = parse_exposition(prometheus_text(doc));
  for (const auto& err : e.errors) ADD_FAILURE() << "exposition: " << err;
  return e;
}

// ---------------------------------------------------------------------------
// prometheus_text()

TEST(PrometheusText, OutputIsValidExpositionWithHelpAndTypeForEveryFamily) {
  Exposition e = render(sample_status());
  ASSERT_FALSE(e.series.empty());
  for (const auto& [name, f] : e.families) {
    EXPECT_TRUE(f.has_help && !f.help.empty()) << name;
    EXPECT_TRUE(f.has_type) << name;
    EXPECT_TRUE(f.has_samples) << name << " has HELP/TYPE but no sample";
    EXPECT_EQ(name.rfind("rbdcache_", 0), 0u) << name;
  }
}

TEST(PrometheusText, MonotonicCountersEndInTotalAndAreTypedCounter) {
  Exposition e = render(sample_status());
  const std::map<std::string, std::string> counters = {
      {"rbdcache_io_read_hits_total", "300"},
      {"rbdcache_io_read_misses_total", "100"},
      {"rbdcache_io_write_hits_total", "40"},
      {"rbdcache_io_write_misses_total", "60"},
      {"rbdcache_io_promotions_total", "1000"},
      {"rbdcache_io_demotions_total", "3"},
      {"rbdcache_io_bypassed_bytes_total", "8192"},
      {"rbdcache_writeback_written_back_bytes_total", "7340032"},
      {"rbdcache_writeback_errors_total", "2"},
      {"rbdcache_metadata_commits_total", "10233"},
  };
  for (const auto& [name, value] : counters) {
    EXPECT_EQ(e.families[name].type, "counter") << name;
    EXPECT_EQ(e.value(name), value) << name;
  }
  size_t n_counters = 0;
  for (const auto& [name, f] : e.families) n_counters += f.type == "counter";
  EXPECT_EQ(n_counters, counters.size()) << "a gauge was typed as a counter";
}

TEST(PrometheusText, OtherNumbersAreGaugesWithTheirValues) {
  Exposition e = render(sample_status());
  const std::map<std::string, std::string> gauges = {
      {"rbdcache_format_version", "1"},
      {"rbdcache_origin_size_bytes", "10737418240"},
      {"rbdcache_cache_dirty_bytes", "1310720"},
      {"rbdcache_cache_oldest_dirty_age_seconds", "12.5"},
      {"rbdcache_io_read_hit_ratio", "0.75"},
      {"rbdcache_writeback_flush_eta_seconds", "0.025"},
      {"rbdcache_metadata_erase_count_mean", "1.5"},
      {"rbdcache_memory_mapping_bytes_per_block", "32"},
      {"rbdcache_ownership_cache_epoch", "3"},
  };
  for (const auto& [name, value] : gauges) {
    EXPECT_EQ(e.families[name].type, "gauge") << name;
    EXPECT_EQ(e.value(name), value) << name;
  }
}

TEST(PrometheusText, BooleansBecomeZeroOrOneGauges) {
  json doc = sample_status();
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_flush_active"), "1");
  EXPECT_EQ(e.value("rbdcache_ownership_exclusive_lock"), "1");
  EXPECT_EQ(e.value("rbdcache_ownership_shared_image"), "1");
  EXPECT_EQ(e.families["rbdcache_flush_active"].type, "gauge");
  doc["flush"]["active"] = false;
  doc["ownership"]["exclusive_lock"] = false;
  doc["ownership"]["shared_image"] = false;
  e = render(doc);
  EXPECT_EQ(e.value("rbdcache_flush_active"), "0");
  EXPECT_EQ(e.value("rbdcache_ownership_exclusive_lock"), "0");
  EXPECT_EQ(e.value("rbdcache_ownership_shared_image"), "0");
}

TEST(PrometheusText, ModeHasOneSeriesPerModeWithOneForTheCurrent) {
  json doc = sample_status();
  doc["mode"] = "writethrough";
  Exposition e = render(doc);
  EXPECT_EQ(e.families["rbdcache_mode"].type, "gauge");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"writeback\"}"), "0");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"writethrough\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"passthrough\"}"), "0");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"uncached\"}"), "0");
}

TEST(PrometheusText, UncachedServerHasOnlyItsIdentity) {
  // Without --cache-dev the status document has only these fields.
  json doc = {{"format_version", 1},
              {"origin", "file:/srv/vm1.raw"},
              {"origin_size_bytes", 1048576},
              {"mode", "uncached"}};
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"uncached\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"writeback\"}"), "0");
  EXPECT_EQ(e.value("rbdcache_info{origin=\"file:/srv/vm1.raw\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_origin_size_bytes"), "1048576");
  EXPECT_EQ(e.value("rbdcache_format_version"), "1");
  EXPECT_EQ(e.series.size(), 7u);
  EXPECT_TRUE(unexposed_fields(doc).empty());
}

TEST(PrometheusText, UnknownModeGetsItsOwnSeries) {
  json doc = sample_status();
  doc["mode"] = "read\"only";
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"read\\\"only\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"writeback\"}"), "0");
}

TEST(PrometheusText, InfoCarriesOriginAndCacheUuid) {
  Exposition e = render(sample_status());
  EXPECT_EQ(
      e.value("rbdcache_info{origin=\"rbd:rbd/vm1\",cache_uuid=\"8a6f2a0e-1f7c-4b8e-9a53-2f9c1d7e5b11\"}"),
      "1");
}

TEST(PrometheusText, LabelValuesAreEscaped) {
  json doc = sample_status();
  doc["origin"] = "file:/srv/a \"b\"\\c\nd";
  std::string text = prometheus_text(doc);
  EXPECT_NE(text.find(R"(origin="file:/srv/a \"b\"\\c\nd")"), std::string::npos) << text;
  render(doc);  // and it parses
}

TEST(PrometheusText, NullValuesAreOmittedWithTheirHelpAndType) {
  json doc = sample_status();
  doc["cache"]["oldest_dirty_age_seconds"] = nullptr;
  doc["flush"]["max_rate_bytes_per_second"] = nullptr;
  doc["writeback"]["flush_eta_seconds"] = nullptr;
  doc["io"]["read_hit_ratio"] = nullptr;
  doc["ownership"]["cache_uuid"] = nullptr;
  std::string text = prometheus_text(doc);
  EXPECT_EQ(text.find("rbdcache_cache_oldest_dirty_age_seconds"), std::string::npos);
  EXPECT_EQ(text.find("rbdcache_flush_max_rate_bytes_per_second"), std::string::npos);
  EXPECT_EQ(text.find("rbdcache_writeback_flush_eta_seconds"), std::string::npos);
  EXPECT_EQ(text.find("rbdcache_io_read_hit_ratio"), std::string::npos);
  EXPECT_EQ(text.find("cache_uuid"), std::string::npos);
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_info{origin=\"rbd:rbd/vm1\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_cache_dirty_bytes"), "1310720");
}

TEST(PrometheusText, MissingSectionsAndWrongTypesAreOmitted) {
  json doc = {{"mode", "passthrough"}, {"cache", "not an object"}, {"io", {{"read_hits", "12"}}}};
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_mode{mode=\"passthrough\"}"), "1");
  EXPECT_EQ(e.value("rbdcache_info"), "1");
  EXPECT_EQ(e.series.size(), 5u);
  EXPECT_TRUE(prometheus_text(json::array({1, 2})).empty());
  EXPECT_TRUE(prometheus_text(json(nullptr)).empty());
}

TEST(PrometheusText, UnknownFieldsAreSkippedAndReported) {
  json doc = sample_status();
  doc["io"]["brand new"] = 5;
  doc["extra"] = {{"x", 1}, {"nested", {{"y", true}}}};
  doc["top_level_count"] = 7;
  doc["cache"]["per_tier"] = json::array({1, 2});
  std::string text = prometheus_text(doc);
  EXPECT_EQ(text.find("brand"), std::string::npos);
  EXPECT_EQ(text.find("extra"), std::string::npos);
  EXPECT_EQ(text.find("top_level_count"), std::string::npos);
  EXPECT_EQ(text.find("per_tier"), std::string::npos);
  render(doc);
  std::vector<std::string> unexposed = unexposed_fields(doc);
  std::set<std::string> got(unexposed.begin(), unexposed.end());
  EXPECT_EQ(got, (std::set<std::string>{"/io/brand new", "/extra/x", "/extra/nested/y",
                                        "/top_level_count", "/cache/per_tier/0",
                                        "/cache/per_tier/1"}));
}

TEST(PrometheusText, EveryNumericLeafOfTheSampleIsExposed) {
  json doc = sample_status();
  EXPECT_TRUE(unexposed_fields(doc).empty()) << ::testing::PrintToString(unexposed_fields(doc));
  Exposition e = render(doc);
  size_t leaves = 0;
  auto check = [&](const std::string& section, const std::string& field, const json& v) {
    if (!v.is_number() && !v.is_boolean()) return;
    ++leaves;
    std::string name = "rbdcache_" + (section.empty() ? "" : section + "_") + field;
    EXPECT_TRUE(e.has(name) || e.has(name + "_total"))
        << (section.empty() ? "" : section + ".") << field << " is not exposed as " << name;
  };
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.value().is_object()) {
      for (auto f = it.value().begin(); f != it.value().end(); ++f) check(it.key(), f.key(), f.value());
    } else {
      check("", it.key(), it.value());
    }
  }
  EXPECT_EQ(leaves, 40u) << "the sample document changed; update this count";
}

TEST(PrometheusText, LargeIntegersAreWrittenExactly) {
  json doc = sample_status();
  doc["io"]["read_hits"] = std::numeric_limits<uint64_t>::max();
  doc["cache"]["dirty_bytes"] = 0;
  doc["writeback"]["rate_bytes_per_second"] = 1e20;
  Exposition e = render(doc);
  EXPECT_EQ(e.value("rbdcache_io_read_hits_total"), "18446744073709551615");
  EXPECT_EQ(e.value("rbdcache_cache_dirty_bytes"), "0");
  EXPECT_EQ(std::strtod(e.value("rbdcache_writeback_rate_bytes_per_second").c_str(), nullptr), 1e20);
}

// ---------------------------------------------------------------------------
// The HTTP server, over real sockets.

struct HttpResponse {
  bool ok = false;  // a status line was received
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string raw;
};

HttpResponse parse_response(const std::string& raw) {
  HttpResponse r;
  r.raw = raw;
  size_t end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) return r;
  r.ok = true;
  r.status = std::atoi(raw.c_str() + 9);
  size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    size_t eol = raw.find("\r\n", pos);
    std::string line = raw.substr(pos, eol - pos);
    size_t colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    size_t v = line.find_first_not_of(' ', colon + 1);
    r.headers[name] = v == std::string::npos ? "" : line.substr(v);
    pos = eol + 2;
  }
  r.body = raw.substr(end + 4);
  return r;
}

// A blocking client socket connected to host:port, or -1. Receives time out
// after `recv_timeout`.
int connect_to(const std::string& host, uint16_t port, std::chrono::seconds recv_timeout = 20s) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(recv_timeout.count());
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (::connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  return fd;
}

bool send_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

int last_read_errno = 0;  // errno of the last read_all() that ended in an error

// Reads until end of stream. `eof` tells whether it came (rather than an
// error or the receive timeout).
std::string read_all(int fd, bool* eof = nullptr) {
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    // With SO_RCVTIMEO set, io_uring's task-work notifications to this
    // thread surface as EINTR instead of restarting the call.
    if (n < 0 && errno == EINTR) continue;
    if (eof != nullptr) *eof = n == 0;
    if (n < 0) last_read_errno = errno;
    return out;
  }
}

HttpResponse fetch(uint16_t port, const std::string& request, const std::string& host = "127.0.0.1") {
  int fd = connect_to(host, port);
  if (fd < 0) {
    ADD_FAILURE() << "cannot connect to port " << port << ": " << std::strerror(errno);
    return {};
  }
  EXPECT_TRUE(send_all(fd, request));
  bool eof = false;
  std::string raw = read_all(fd, &eof);
  EXPECT_TRUE(eof) << "the server did not close the connection";
  ::close(fd);
  return parse_response(raw);
}

HttpResponse get(uint16_t port, const std::string& path) {
  return fetch(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n");
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(rt.ok()); }

  void start(MetricsServerOptions options = {}, const std::string& listen = "127.0.0.1:0") {
    auto s = MetricsServer::start(
        rt.reactor(), listen,
        [this] {
          ++snapshots;
          on_reactor_thread = on_reactor_thread && std::this_thread::get_id() == rt.thread_id();
          if (snapshot_hook) snapshot_hook();
          return status;
        },
        options);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    server = std::move(s).value();
  }

  // Operations in flight on the reactor, other than its own eventfd read.
  uint64_t reactor_ops() {
    return rt.call<uint64_t>([this](std::function<void(uint64_t)> done) { done(rt.reactor().in_flight()); });
  }

  // Waits until the reactor has nothing of ours in flight.
  bool reactor_idle(std::chrono::milliseconds within = 5000ms) {
    auto until = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < until) {
      if (reactor_ops() == 0) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  ReactorThread rt;  // declared first: destroyed after the server
  json status = sample_status();
  std::atomic<int> snapshots{0};
  std::atomic<bool> on_reactor_thread{true};
  std::function<void()> snapshot_hook;
  std::unique_ptr<MetricsServer> server;
};

TEST_F(MetricsServerTest, ScrapeAnswersTheExpositionWithItsContentType) {
  start();
  HttpResponse r = get(server->port(), "/metrics");
  ASSERT_TRUE(r.ok) << r.raw;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"].rfind("text/plain; version=0.0.4", 0), 0u) << r.headers["content-type"];
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_EQ(r.headers["content-length"], std::to_string(r.body.size()));
  EXPECT_EQ(r.body, prometheus_text(status));
  EXPECT_TRUE(parse_exposition(r.body).errors.empty());
}

TEST_F(MetricsServerTest, EachScrapeTakesAFreshSnapshotOnTheReactorThread) {
  start();
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
  EXPECT_EQ(get(server->port(), "/metrics?name[]=x").status, 200);
  HttpResponse r = fetch(server->port(), "GET /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(snapshots.load(), 3);
  EXPECT_TRUE(on_reactor_thread.load());
}

TEST_F(MetricsServerTest, PortZeroPicksAFreePortThatTheUrlNames) {
  start();
  EXPECT_NE(server->port(), 0);
  EXPECT_EQ(server->url(), "http://127.0.0.1:" + std::to_string(server->port()) + "/metrics");
}

TEST_F(MetricsServerTest, PortWithoutAddressBindsLoopback) {
  start({}, "0");
  EXPECT_EQ(server->url(), "http://127.0.0.1:" + std::to_string(server->port()) + "/metrics");
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
}

TEST_F(MetricsServerTest, ListensOnIpv6Loopback) {
  auto s = MetricsServer::start(rt.reactor(), "[::1]:0", [] { return sample_status(); });
  if (!s.is_ok()) GTEST_SKIP() << "no IPv6 loopback: " << s.status().to_string();
  server = std::move(s).value();
  EXPECT_EQ(server->url(), "http://[::1]:" + std::to_string(server->port()) + "/metrics");
  HttpResponse r = fetch(server->port(), "GET /metrics HTTP/1.1\r\n\r\n", "::1");
  EXPECT_EQ(r.status, 200);
}

TEST_F(MetricsServerTest, BadListenAddressesAreRejected) {
  for (const char* bad : {"", "http", "1.2.3.4:", "127.0.0.1:70000", "[::1", "[::1]80", "no.such.host.invalid:0"}) {
    auto s = MetricsServer::start(rt.reactor(), bad, [] { return json::object(); });
    EXPECT_FALSE(s.is_ok()) << "'" << bad << "' was accepted";
  }
}

TEST_F(MetricsServerTest, PortInUseIsReported) {
  start();
  auto second = MetricsServer::start(rt.reactor(), "127.0.0.1:" + std::to_string(server->port()),
                                     [] { return json::object(); });
  ASSERT_FALSE(second.is_ok());
  EXPECT_EQ(second.status().err(), EADDRINUSE) << second.status().to_string();
}

TEST_F(MetricsServerTest, HeadAnswersHeadersWithoutBody) {
  start();
  HttpResponse r = fetch(server->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-length"], std::to_string(prometheus_text(status).size()));
  EXPECT_TRUE(r.body.empty());
}

TEST_F(MetricsServerTest, RootPointsToMetrics) {
  start();
  HttpResponse r = get(server->port(), "/");
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("href=\"/metrics\""), std::string::npos) << r.body;
  EXPECT_EQ(snapshots.load(), 0);
}

TEST_F(MetricsServerTest, UnknownPathIs404) {
  start();
  for (const char* path : {"/metricsx", "/metrics/", "/favicon.ico", "/status"}) {
    EXPECT_EQ(get(server->port(), path).status, 404) << path;
  }
  EXPECT_EQ(snapshots.load(), 0);
}

TEST_F(MetricsServerTest, OtherMethodsAre405) {
  start();
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS"}) {
    HttpResponse r = fetch(server->port(), std::string(method) +
                                               " /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    EXPECT_EQ(r.status, 405) << method;
    EXPECT_EQ(r.headers["allow"], "GET, HEAD");
  }
  EXPECT_EQ(snapshots.load(), 0);
}

TEST_F(MetricsServerTest, GarbageRequestsAre400) {
  start();
  for (const std::string& req : {std::string("hello\r\n\r\n"), std::string("GET /metrics\r\n\r\n"),
                                std::string("GET metrics HTTP/1.1\r\n\r\n"),
                                std::string("GET /metrics HTTP/2.0\r\n\r\n"),
                                std::string("GET  /metrics HTTP/1.1\r\n\r\n"),
                                std::string("G\x01T /metrics HTTP/1.1\r\n\r\n"),
                                std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 14)}) {
    HttpResponse r = fetch(server->port(), req);
    EXPECT_EQ(r.status, 400) << ::testing::PrintToString(req) << " got " << r.raw;
  }
  EXPECT_EQ(snapshots.load(), 0);
}

TEST_F(MetricsServerTest, BareLineFeedsAreAccepted) {
  start();
  EXPECT_EQ(fetch(server->port(), "GET /metrics HTTP/1.0\nHost: x\n\n").status, 200);
}

TEST_F(MetricsServerTest, RequestArrivingInPiecesIsServed) {
  start();
  int fd = connect_to("127.0.0.1", server->port());
  ASSERT_GE(fd, 0);
  for (const char* piece : {"GE", "T /met", "rics HTTP/1.1\r", "\nHost: x\r\n\r", "\n"}) {
    ASSERT_TRUE(send_all(fd, piece));
    std::this_thread::sleep_for(20ms);
  }
  HttpResponse r = parse_response(read_all(fd));
  ::close(fd);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, prometheus_text(status));
}

TEST_F(MetricsServerTest, OversizedRequestIs431) {
  start({.max_request_bytes = 1024});
  std::string req = "GET /metrics HTTP/1.1\r\nX-Padding: " + std::string(4000, 'a') + "\r\n\r\n";
  HttpResponse r = fetch(server->port(), req);
  EXPECT_EQ(r.status, 431) << r.raw;
  EXPECT_EQ(snapshots.load(), 0);
  // A request just within the limit is served.
  std::string fits = "GET /metrics HTTP/1.1\r\nX-Padding: ";
  fits += std::string(1024 - fits.size() - 4, 'b') + "\r\n\r\n";
  ASSERT_EQ(fits.size(), 1024u);
  EXPECT_EQ(fetch(server->port(), fits).status, 200);
}

TEST_F(MetricsServerTest, DefaultLimitRejectsRequestsOver8KiB) {
  start();
  std::string req = "GET /metrics HTTP/1.1\r\nX-Padding: " + std::string(9000, 'a') + "\r\n\r\n";
  EXPECT_EQ(fetch(server->port(), req).status, 431);
}

TEST_F(MetricsServerTest, IdleClientIsDroppedAfterTheDeadline) {
  start({.request_timeout = 300ms});
  int fd = connect_to("127.0.0.1", server->port());
  ASSERT_GE(fd, 0);
  auto t0 = std::chrono::steady_clock::now();
  bool eof = false;
  std::string got = read_all(fd, &eof);
  auto waited = std::chrono::steady_clock::now() - t0;
  ::close(fd);
  EXPECT_TRUE(eof) << "not dropped within the receive timeout: " << std::strerror(last_read_errno);
  EXPECT_TRUE(got.empty()) << got;
  EXPECT_GE(waited, 250ms);
  EXPECT_LT(waited, 10s);
  EXPECT_EQ(snapshots.load(), 0);
}

TEST_F(MetricsServerTest, ClientSendingAPartialRequestIsDropped) {
  start({.request_timeout = 300ms});
  int fd = connect_to("127.0.0.1", server->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n"));
  bool eof = false;
  std::string got = read_all(fd, &eof);
  ::close(fd);
  EXPECT_TRUE(eof) << std::strerror(last_read_errno);
  EXPECT_TRUE(got.empty()) << got;
  // The server is still serving.
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
}

TEST_F(MetricsServerTest, IdleClientsDoNotDelayScrapes) {
  start({.request_timeout = 30s});
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    int fd = connect_to("127.0.0.1", server->port());
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  for (int fd : idle) ::close(fd);
}

TEST_F(MetricsServerTest, ConnectionsBeyondTheLimitAreClosed) {
  start({.request_timeout = 30s, .max_connections = 2});
  int a = connect_to("127.0.0.1", server->port());
  int b = connect_to("127.0.0.1", server->port());
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  // Let the server adopt both before the third arrives.
  std::this_thread::sleep_for(100ms);
  int c = connect_to("127.0.0.1", server->port(), 10s);
  ASSERT_GE(c, 0);
  bool eof = false;
  EXPECT_TRUE(read_all(c, &eof).empty());
  EXPECT_TRUE(eof) << "the connection over the limit was not closed";
  ::close(c);
  // Once one closes, scrapes are served again.
  ASSERT_TRUE(send_all(a, "GET /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(parse_response(read_all(a)).status, 200);
  ::close(a);
  // The server notices the close soon; until then new connections may still
  // be over the limit.
  int status_code = 0;
  for (int i = 0; i < 500 && status_code != 200; ++i) {
    int fd = connect_to("127.0.0.1", server->port());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, "GET /metrics HTTP/1.1\r\n\r\n"));
    status_code = parse_response(read_all(fd)).status;
    ::close(fd);
    if (status_code != 200) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(status_code, 200);
  ::close(b);
}

TEST_F(MetricsServerTest, ConcurrentScrapesAllSucceed) {
  start();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        HttpResponse r = get(server->port(), "/metrics");
        if (r.status == 200 && r.body == prometheus_text(sample_status())) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kPerThread);
  EXPECT_EQ(snapshots.load(), kThreads * kPerThread);
}

TEST_F(MetricsServerTest, ThrowingSnapshotAnswers500AndKeepsServing) {
  bool fail = true;
  snapshot_hook = [&fail] {
    if (fail) throw std::runtime_error("engine is gone");
  };
  start();
  HttpResponse r = get(server->port(), "/metrics");
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("engine is gone"), std::string::npos);
  rt.call<bool>([&fail](std::function<void(bool)> done) {
    fail = false;
    done(true);
  });
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
}

TEST_F(MetricsServerTest, StopFromAnotherThreadClosesConnectedClients) {
  start({.request_timeout = 60s});
  int idle = connect_to("127.0.0.1", server->port());
  ASSERT_GE(idle, 0);
  int partial = connect_to("127.0.0.1", server->port());
  ASSERT_GE(partial, 0);
  ASSERT_TRUE(send_all(partial, "GET /metrics HTTP/1.1\r\n"));
  std::this_thread::sleep_for(100ms);

  auto t0 = std::chrono::steady_clock::now();
  server->stop();
  for (int fd : {idle, partial}) {
    bool eof = false;
    EXPECT_TRUE(read_all(fd, &eof).empty());
    EXPECT_TRUE(eof) << std::strerror(last_read_errno);
    ::close(fd);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  // Nothing is left in flight (no accept, recv or deadline timer), and the
  // port no longer accepts.
  EXPECT_TRUE(reactor_idle());
  EXPECT_LT(connect_to("127.0.0.1", server->port()), 0);
  EXPECT_EQ(snapshots.load(), 0);
  server->stop();  // idempotent
}

TEST_F(MetricsServerTest, StopOnTheReactorThreadEndsEverything) {
  start({.request_timeout = 60s});
  int idle = connect_to("127.0.0.1", server->port());
  ASSERT_GE(idle, 0);
  EXPECT_EQ(get(server->port(), "/metrics").status, 200);
  rt.call<bool>([this](std::function<void(bool)> done) {
    server->stop();
    done(true);
  });
  bool eof = false;
  EXPECT_TRUE(read_all(idle, &eof).empty());
  EXPECT_TRUE(eof) << std::strerror(last_read_errno);
  ::close(idle);
  EXPECT_TRUE(reactor_idle());
  EXPECT_LT(connect_to("127.0.0.1", server->port()), 0);
}

TEST_F(MetricsServerTest, StopWaitsForARunningSnapshotAndNoneStartsAfter) {
  std::atomic<bool> in_snapshot{false};
  std::atomic<bool> snapshot_done{false};
  snapshot_hook = [&] {
    in_snapshot = true;
    std::this_thread::sleep_for(300ms);
    snapshot_done = true;
  };
  start();
  std::thread scraper([&] {
    HttpResponse r = get(server->port(), "/metrics");
    EXPECT_EQ(r.status, 200);  // the scrape already in progress completes
  });
  while (!in_snapshot) std::this_thread::sleep_for(1ms);
  server->stop();
  EXPECT_TRUE(snapshot_done.load()) << "stop() returned while the snapshot ran";
  scraper.join();
  int before = snapshots.load();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(connect_to("127.0.0.1", server->port()), -1);
  EXPECT_EQ(snapshots.load(), before);
}

TEST_F(MetricsServerTest, StopWhileAResponseIsBeingSentCompletes) {
  // A large document and a client that never reads: the send stalls, and
  // stop() must still end the connection.
  status["origin"] = "rbd:rbd/" + std::string(16 << 20, 'x');
  start({.request_timeout = 60s});
  int fd = connect_to("127.0.0.1", server->port());
  ASSERT_GE(fd, 0);
  int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_TRUE(send_all(fd, "GET /metrics HTTP/1.1\r\n\r\n"));
  std::this_thread::sleep_for(200ms);
  server->stop();
  EXPECT_TRUE(reactor_idle());
  ::close(fd);
}

TEST_F(MetricsServerTest, DestroyingTheServerWhileClientsAreConnectedIsSafe) {
  start({.request_timeout = 60s});
  int fd = connect_to("127.0.0.1", server->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, "GET /met"));
  std::this_thread::sleep_for(50ms);
  server.reset();
  bool eof = false;
  read_all(fd, &eof);
  EXPECT_TRUE(eof) << std::strerror(last_read_errno);
  ::close(fd);
  EXPECT_TRUE(reactor_idle());
}

TEST_F(MetricsServerTest, StartBeforeTheReactorRunsServesOnceItDoes) {
  auto r = io::Reactor::create(32, 0);
  ASSERT_TRUE(r.is_ok());
  io::Reactor& reactor = *r.value();
  auto s = MetricsServer::start(reactor, "127.0.0.1:0", [] { return sample_status(); });
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  std::unique_ptr<MetricsServer> early = std::move(s).value();
  std::thread loop([&reactor] { reactor.run(); });
  EXPECT_EQ(get(early->port(), "/metrics").status, 200);
  early->stop();
  reactor.stop();
  loop.join();  // returns: stop() left nothing in flight
  early.reset();
}

}  // namespace
}  // namespace rbdcache::control
