// `rbdcache format`, `check` and `dump`: the metadata device tools.
#include <cstdio>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cache/mapping.h"
#include "cache/smq_policy.h"
#include "metalog/block_device.h"
#include "metalog/formatter.h"
#include "metalog/reader.h"
#include "metalog/superblock.h"

namespace rbdcache::cli {

namespace {

using namespace rbdcache::metalog;

// Parses "4096", "64K", "1M", "2G" (binary multiples; an optional "B" or
// "iB" after the suffix is accepted).
std::optional<uint64_t> parse_size(std::string s) {
  if (s.empty()) return std::nullopt;
  for (const char* tail : {"iB", "ib", "B", "b"}) {
    std::string t(tail);
    if (s.size() > t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0) {
      s.resize(s.size() - t.size());
      break;
    }
  }
  uint64_t mult = 1;
  switch (s.empty() ? '\0' : s.back()) {
    case 'k': case 'K': mult = 1ull << 10; break;
    case 'm': case 'M': mult = 1ull << 20; break;
    case 'g': case 'G': mult = 1ull << 30; break;
    default: break;
  }
  if (mult != 1) s.pop_back();
  if (s.empty() || s.size() > 12) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v * mult;
}

std::string size_validator(const std::string& s) {
  auto v = parse_size(s);
  if (!v || *v > UINT32_MAX) return "not a size (examples: 4096, 64K, 1M)";
  return {};
}

std::string state_name(SegmentState s) {
  switch (s) {
    case SegmentState::kFree: return "free";
    case SegmentState::kOpen: return "open";
    case SegmentState::kSealed: return "sealed";
    case SegmentState::kRetired: return "retired";
  }
  return "?";
}

// Mask as hex, most significant sub-block first.
std::string mask_hex(const SubBlockMask& m, uint32_t sub_blocks) {
  std::vector<std::byte> b(mask_bytes(sub_blocks));
  m.to_bytes(b);
  std::string s;
  for (auto it = b.rbegin(); it != b.rend(); ++it) s += fmt::format("{:02x}", static_cast<unsigned>(*it));
  return s;
}

Result<std::unique_ptr<FileBlockDevice>> open_dev(const std::string& path, bool ro) {
  auto dev = FileBlockDevice::open(path, ro);
  if (!dev.is_ok()) return dev.status();
  return dev;
}

int run_format(const std::string& meta_path, const std::string& cache_path, const std::string& bs,
               const std::string& ss, uint32_t max_erase, bool force) {
  FormatOptions opt;
  opt.cache_block_size = static_cast<uint32_t>(*parse_size(bs));
  opt.segment_size = static_cast<uint32_t>(*parse_size(ss));
  opt.max_erase_count = max_erase;
  opt.force = force;
  auto meta = open_dev(meta_path, false);
  if (!meta.is_ok()) {
    fmt::print(stderr, "rbdcache format: metadata device: {}\n", meta.status().to_string());
    return 1;
  }
  auto cache = open_dev(cache_path, false);
  if (!cache.is_ok()) {
    fmt::print(stderr, "rbdcache format: cache device: {}\n", cache.status().to_string());
    return 1;
  }
  Result<Superblock> sb = format_devices(**meta, **cache, opt);
  if (!sb.is_ok()) {
    fmt::print(stderr, "rbdcache format: {}\n", sb.status().to_string());
    return 1;
  }
  fmt::print("formatted cache {}\n", sb->uuid.to_string());
  fmt::print("  metadata device {}: {} segments of {} bytes\n", meta_path, sb->segment_count - 1,
             sb->segment_size);
  fmt::print("  cache device {} ({}): {} blocks of {} bytes from offset {}\n", cache_path,
             sb->cache_dev_uuid.to_string(), sb->cache_block_count, sb->cache_block_size,
             sb->cache_data_offset);
  return 0;
}

int run_check(const std::string& meta_path) {
  auto meta = open_dev(meta_path, true);
  if (!meta.is_ok()) {
    fmt::print(stderr, "rbdcache check: {}\n", meta.status().to_string());
    return 1;
  }
  Result<Recovery> rec = scan_log(**meta);
  if (!rec.is_ok()) {
    fmt::print("{}: CORRUPT: {}\n", meta_path, rec.status().to_string());
    return 1;
  }
  for (const std::string& n : rec->notes) fmt::print("note: {}\n", n);
  if (!rec->problems.empty()) {
    for (const Problem& p : rec->problems) fmt::print("error: {}\n", p.to_string());
    fmt::print("{}: CORRUPT: {} problem{} found; write-back cannot start on this metadata\n", meta_path,
               rec->problems.size(), rec->problems.size() == 1 ? "" : "s");
    return 1;
  }
  fmt::print("{}: consistent: cache {}, {} log blocks replayed, {} mappings\n", meta_path,
             rec->superblock.uuid.to_string(), rec->blocks_applied, rec->state.mappings().size());
  return 0;
}

nlohmann::json superblock_json(const Superblock& sb) {
  return {
      {"uuid", sb.uuid.to_string()},
      {"format_version", kFormatVersion},
      {"generation", sb.generation},
      {"compat", sb.compat},
      {"ro_compat", sb.ro_compat},
      {"incompat", sb.incompat},
      {"log_block_size", kLogBlockSize},
      {"segment_size", sb.segment_size},
      {"segment_count", sb.segment_count},
      {"meta_dev_size", sb.meta_dev_size},
      {"max_erase_count", sb.max_erase_count},
      {"cache_block_size", sb.cache_block_size},
      {"cache_dev_size", sb.cache_dev_size},
      {"cache_dev_uuid", sb.cache_dev_uuid.to_string()},
      {"cache_data_offset", sb.cache_data_offset},
      {"cache_block_count", sb.cache_block_count},
      {"created_unix", sb.created_unix},
      {"cache_epoch", sb.cache_epoch},
      {"origin_size", sb.origin_size},
      {"origin_id", sb.origin_id},
  };
}

int run_dump(const std::string& meta_path, bool json) {
  auto meta = open_dev(meta_path, true);
  if (!meta.is_ok()) {
    fmt::print(stderr, "rbdcache dump: {}\n", meta.status().to_string());
    return 1;
  }
  Result<Recovery> rec = scan_log(**meta);
  if (!rec.is_ok()) {
    fmt::print(stderr, "rbdcache dump: {}\n", rec.status().to_string());
    return 1;
  }
  const Superblock& sb = rec->superblock;
  std::map<uint32_t, const Mapping*> sorted;
  for (const auto& [c, m] : rec->state.mappings()) sorted.emplace(c.value(), &m);
  const uint32_t n = sb.sub_blocks();
  // The RAM the mapping and the policy will take when this cache is served,
  // measured by building them at this cache's size.
  uint64_t ram = 0;
  {
    auto map = cache::Mapping::create(static_cast<uint32_t>(sb.cache_block_count), sb.cache_block_size);
    cache::SmqConfig pc;
    pc.nr_blocks = static_cast<uint32_t>(sb.cache_block_count);
    pc.block_size = sb.cache_block_size;
    auto policy = cache::SmqPolicy::create(pc);
    if (map.is_ok() && policy.is_ok()) ram = map->memory_bytes() + policy.value()->memory_bytes();
  }
  const double ram_per_block =
      sb.cache_block_count ? static_cast<double>(ram) / static_cast<double>(sb.cache_block_count) : 0;
  if (json) {
    nlohmann::json j;
    j["superblock"] = superblock_json(sb);
    j["mapping_ram"] = {{"bytes", ram}, {"bytes_per_block", ram_per_block}};
    j["segments"] = nlohmann::json::array();
    for (size_t s = 1; s < rec->segments.size(); ++s) {
      const SegmentSummary& seg = rec->segments[s];
      j["segments"].push_back({{"id", s},
                               {"state", state_name(seg.state)},
                               {"index_ok", seg.index_ok},
                               {"sequence", seg.sequence},
                               {"erase_count", seg.erase_count},
                               {"written_blocks", seg.written_blocks},
                               {"live_blocks", seg.live_blocks},
                               {"obsolete_blocks", seg.obsolete_blocks}});
    }
    j["mappings"] = nlohmann::json::array();
    for (const auto& [c, m] : sorted) {
      j["mappings"].push_back({{"cache_block", c},
                               {"origin_block", m->origin.value()},
                               {"valid", mask_hex(m->valid, n)},
                               {"dirty", mask_hex(m->dirty, n)}});
    }
    j["problems"] = nlohmann::json::array();
    for (const Problem& p : rec->problems) {
      j["problems"].push_back({{"segment", p.segment.value()}, {"block", p.block}, {"what", p.what}});
    }
    j["notes"] = rec->notes;
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("mapping RAM when served: {} bytes ({:.1f} bytes per cache block)\n", ram,
               ram_per_block);
    fmt::print("superblock:\n");
    const nlohmann::json fields = superblock_json(sb);
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      fmt::print("  {:<18} {}\n", it.key(), it.value().dump());
    }
    fmt::print("segments:\n  {:>7} {:<8} {:>12} {:>6} {:>5} {:>8}\n", "id", "state", "sequence", "erases",
               "live", "obsolete");
    for (size_t s = 1; s < rec->segments.size(); ++s) {
      const SegmentSummary& seg = rec->segments[s];
      fmt::print("  {:>7} {:<8} {:>12} {:>6} {:>5} {:>8}{}\n", s, state_name(seg.state), seg.sequence,
                 seg.erase_count, seg.live_blocks, seg.obsolete_blocks, seg.index_ok ? "" : "  (bad index)");
    }
    fmt::print("mappings ({}):\n  {:>10} {:>16}  valid/dirty (sub-block 0 is the last hex digit)\n",
               sorted.size(), "cache", "origin");
    for (const auto& [c, m] : sorted) {
      fmt::print("  {:>10} {:>16}  {} {}\n", c, m->origin.value(), mask_hex(m->valid, n), mask_hex(m->dirty, n));
    }
    for (const std::string& note : rec->notes) fmt::print("note: {}\n", note);
    for (const Problem& p : rec->problems) fmt::print("error: {}\n", p.to_string());
  }
  return rec->problems.empty() ? 0 : 1;
}

}  // namespace

void add_metadata_commands(CLI::App& app, int& exit_code) {
  // Option storage must outlive parsing; these live as long as the program.
  static std::string meta_path, cache_path, block_size = "64K", segment_size = "1M";
  static uint32_t max_erase = kDefaultMaxEraseCount;
  static bool force = false, json = false;

  auto* fmt_cmd = app.add_subcommand(
      "format",
      "Format a metadata device and a cache device for a new, empty cache.\n"
      "Both must already exist: a regular file (create it first, e.g. with truncate -s) or a block "
      "device. The metadata device is split into segments; the first holds the superblock. The "
      "cache device gets a 4 KiB header and its data area starts at the first block boundary after "
      "it. Refuses devices that already hold an rbdcache cache unless --force is given.");
  fmt_cmd->add_option("--meta-dev", meta_path, "Metadata device or file (must exist)")->required();
  fmt_cmd->add_option("--cache-dev", cache_path, "Cache device or file (must exist)")->required();
  fmt_cmd->add_option("--block-size", block_size,
                      "Cache block size: a power of two from 4K to 1M (default 64K)")
      ->check(CLI::Validator(size_validator, "SIZE"));
  fmt_cmd->add_option("--segment-size", segment_size,
                      "Metadata segment (erase unit) size: a power of two from 16K to 4M (default 1M)")
      ->check(CLI::Validator(size_validator, "SIZE"));
  fmt_cmd->add_option("--max-erase-count", max_erase,
                      "Retire a metadata segment after this many erases (default 100000)")
      ->check(CLI::PositiveNumber);
  fmt_cmd->add_flag("--force", force, "Overwrite devices that already hold an rbdcache cache");
  fmt_cmd->callback([&exit_code] {
    exit_code = run_format(meta_path, cache_path, block_size, segment_size, max_erase, force);
  });

  auto* check_cmd = app.add_subcommand(
      "check",
      "Verify every block of a metadata device and replay the log.\n"
      "Exits 0 when the metadata is consistent and 1 when it is corrupt, printing each problem with "
      "the segment and block it is in. A torn commit at the head of the log is normal after a crash "
      "and is reported as a note only.");
  check_cmd->add_option("--meta-dev", meta_path, "Metadata device or file")->required();
  check_cmd->callback([&exit_code] { exit_code = run_check(meta_path); });

  auto* dump_cmd = app.add_subcommand(
      "dump",
      "Print a metadata device: the superblock, every segment's state, sequence, erase count and "
      "live/obsolete block counts, and the replayed mappings. Exits 1 if problems were found (they "
      "are listed too).");
  dump_cmd->add_option("--meta-dev", meta_path, "Metadata device or file")->required();
  dump_cmd->add_flag("--json", json, "Print JSON instead of text");
  dump_cmd->callback([&exit_code] { exit_code = run_dump(meta_path, json); });
}

}  // namespace rbdcache::cli
