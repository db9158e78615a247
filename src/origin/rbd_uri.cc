#include "origin/rbd_uri.h"

#include <vector>

namespace rbdcache {

namespace {

constexpr std::string_view kPrefix = "rbd:";
constexpr std::string_view kForm = "expected rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE";

// Empty when `name` is acceptable as a pool, namespace or image name.
std::string check_name(std::string_view what, std::string_view name) {
  if (name.empty()) return fmt::format("the {} name is empty", what);
  for (char c : name) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == ' ' || c == '\t') {
      return fmt::format("the {} name '{}' contains white space or a control character", what, name);
    }
  }
  return {};
}

}  // namespace

std::string RbdUri::spec() const {
  if (name_space.empty()) return fmt::format("{}/{}", pool, image);
  return fmt::format("{}/{}/{}", pool, name_space, image);
}

std::string RbdUri::to_string() const { return fmt::format("rbd:{}", spec()); }

Result<RbdUri> parse_rbd_uri(std::string_view uri) {
  if (uri.substr(0, kPrefix.size()) != kPrefix) {
    return Status::invalid_argument(fmt::format("'{}' is not an rbd: URI ({})", uri, kForm));
  }
  std::string_view rest = uri.substr(kPrefix.size());
  if (rest.empty()) {
    return Status::invalid_argument(fmt::format("'{}' names no image ({})", uri, kForm));
  }
  if (rest.substr(0, 2) == "//") {
    return Status::invalid_argument(
        fmt::format("'{}': rbd: takes no '//' authority part ({})", uri, kForm));
  }
  if (rest.find('@') != std::string_view::npos) {
    return Status::invalid_argument(fmt::format(
        "'{}' names a snapshot: snapshots cannot be served, only an image's head ({})", uri, kForm));
  }
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t slash = rest.find('/', start);
    parts.push_back(rest.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() < 2 || parts.size() > 3) {
    return Status::invalid_argument(fmt::format(
        "'{}' has {} part(s) separated by '/' ({})", uri, parts.size(), kForm));
  }
  RbdUri out;
  out.pool = std::string(parts.front());
  out.image = std::string(parts.back());
  if (parts.size() == 3) out.name_space = std::string(parts[1]);

  std::string err = check_name("pool", out.pool);
  if (err.empty() && out.pool.front() == '.') {
    err = fmt::format("the pool name '{}' starts with '.', which Ceph reserves", out.pool);
  }
  if (err.empty() && parts.size() == 3) err = check_name("namespace", out.name_space);
  if (err.empty()) err = check_name("image", out.image);
  if (!err.empty()) {
    return Status::invalid_argument(fmt::format("'{}': {} ({})", uri, err, kForm));
  }
  return out;
}

std::string client_id_from_ceph_args(std::string_view ceph_args) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < ceph_args.size()) {
    while (i < ceph_args.size() && (ceph_args[i] == ' ' || ceph_args[i] == '\t' || ceph_args[i] == '\n')) ++i;
    size_t start = i;
    while (i < ceph_args.size() && ceph_args[i] != ' ' && ceph_args[i] != '\t' && ceph_args[i] != '\n') ++i;
    if (i > start) words.push_back(ceph_args.substr(start, i - start));
  }
  std::string id;
  auto from_name = [&id](std::string_view name) {
    constexpr std::string_view kClient = "client.";
    if (name.substr(0, kClient.size()) == kClient && name.size() > kClient.size()) {
      id = std::string(name.substr(kClient.size()));
    } else {
      id.clear();  // not a client entity: let librados decide
    }
  };
  for (size_t w = 0; w < words.size(); ++w) {
    std::string_view word = words[w];
    bool has_next = w + 1 < words.size();
    if ((word == "--id" || word == "--user") && has_next) {
      id = std::string(words[++w]);
    } else if (word.substr(0, 5) == "--id=") {
      id = std::string(word.substr(5));
    } else if (word.substr(0, 7) == "--user=") {
      id = std::string(word.substr(7));
    } else if ((word == "--name" || word == "-n") && has_next) {
      from_name(words[++w]);
    } else if (word.substr(0, 7) == "--name=") {
      from_name(word.substr(7));
    }
  }
  return id;
}

}  // namespace rbdcache
