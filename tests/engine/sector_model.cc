#include "sector_model.h"

#include <cstring>
#include <sstream>

namespace rbdcache::cache::testing {

namespace {
uint64_t mix(uint64_t id, uint64_t s, uint64_t i) {
  uint64_t x = id * 0x9e3779b97f4a7c15ull ^ (s + 1) * 0xc2b2ae3d27d4eb4full ^ i;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 32);
}
}  // namespace

SectorModel::SectorModel(uint64_t sectors) : hist_(sectors) {
  for (auto& h : hist_) h.push_back(W{kInitial, kInitial, false, 0, 0, true, true});
}

void SectorModel::fill(uint64_t id, uint64_t s, std::span<std::byte> out) {
  uint64_t words[kSector / 8];
  words[0] = id;
  words[1] = s;
  for (uint64_t i = 2; i < kSector / 8; ++i) words[i] = mix(id, s, i);
  std::memcpy(out.data(), words, kSector);
}

uint64_t SectorModel::value(uint64_t s, std::span<const std::byte> in) {
  uint64_t words[kSector / 8];
  std::memcpy(words, in.data(), kSector);
  bool zero = true;
  for (uint64_t w : words) zero = zero && w == 0;
  if (zero) return kZero;
  if (words[1] != s || words[0] == kZero || words[0] == kGarbage) return kGarbage;
  for (uint64_t i = 2; i < kSector / 8; ++i) {
    if (words[i] != mix(words[0], s, i)) return kGarbage;
  }
  return words[0];
}

std::vector<std::byte> SectorModel::initial_image() const {
  std::vector<std::byte> img(hist_.size() * kSector);
  for (uint64_t s = 0; s < hist_.size(); ++s) {
    fill(kInitial, s, std::span(img).subspan(s * kSector, kSector));
  }
  return img;
}

void SectorModel::issued(uint64_t id, uint64_t content, bool trim, uint64_t first, uint64_t n,
                         uint64_t t) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t s = first; s < first + n; ++s) hist_[s].push_back(W{id, content, trim, t});
}

void SectorModel::completed(uint64_t id, bool ok, bool fua, uint64_t t) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& h : hist_) {
    for (W& w : h) {
      if (w.id == id && w.complete == kNever) {
        w.complete = t;
        w.ok = ok;
        w.durable = ok && fua;
      }
    }
  }
}

void SectorModel::flushed(uint64_t issue) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& h : hist_) {
    for (W& w : h) {
      if (w.complete < issue) w.durable = true;
    }
  }
}

bool SectorModel::readable(const std::vector<W>& h, const W& w, uint64_t issue,
                           uint64_t done) const {
  if (w.issue >= done) return false;
  // Only a write known to have happened hides older ones: a failed write
  // (or one cut short) may not have.
  for (const W& w2 : h) {
    if (w2.ok && w.complete != kNever && w2.issue > w.complete && w2.complete < issue) return false;
  }
  return true;
}

bool SectorModel::survives_power_cut(const std::vector<W>& h, const W& w) const {
  for (const W& w2 : h) {
    if (w2.durable && w.complete != kNever && w2.issue > w.complete) return false;
  }
  return true;
}

std::string SectorModel::describe(uint64_t s, uint64_t got) const {
  std::ostringstream o;
  o << "sector " << s << " (byte " << s * kSector << ") holds ";
  if (got == kGarbage) {
    o << "bytes no write produced";
  } else if (got == kZero) {
    o << "zeroes";
  } else {
    o << "the data of write #" << got;
  }
  o << "; its writes (id issue..complete durable):";
  for (const W& w : hist_[s]) {
    o << " #" << w.id;
    if (w.any) {
      o << "(trim)";
    } else if (w.content == kZero) {
      o << "(zeroes)";
    } else if (w.content != w.id) {
      o << "(=#" << w.content << ")";
    }
    o << " " << w.issue
      << ".." << (w.complete == kNever ? std::string("-") : std::to_string(w.complete))
      << (w.durable ? " D" : "");
  }
  return o.str();
}

std::string SectorModel::check_read(uint64_t first, std::span<const std::byte> data,
                                    uint64_t issue, uint64_t done) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t k = 0; k * kSector < data.size(); ++k) {
    const uint64_t s = first + k;
    const uint64_t got = value(s, data.subspan(k * kSector, kSector));
    bool ok = false;
    for (const W& w : hist_[s]) {
      if ((w.content == got || w.any) && readable(hist_[s], w, issue, done)) ok = true;
    }
    if (!ok) return "read: " + describe(s, got);
  }
  return "";
}

void SectorModel::cut(uint64_t t) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& h : hist_) {
    for (W& w : h) {
      if (w.complete == kNever) {
        w.complete = t;
        w.ok = false;
      }
    }
  }
}

std::string SectorModel::restarted(After how, std::span<const std::byte> image, uint64_t t) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string bad;
  int nbad = 0;
  for (uint64_t s = 0; s < hist_.size(); ++s) {
    const uint64_t got = value(s, image.subspan(s * kSector, kSector));
    bool ok = false;
    for (const W& w : hist_[s]) {
      if (w.content != got && !w.any) continue;
      ok = ok || (how == After::kPowerCut ? survives_power_cut(hist_[s], w)
                                          : readable(hist_[s], w, t, t));
    }
    if (!ok && ++nbad <= 4) bad += describe(s, got) + "\n";
    hist_[s].assign(1, W{0, got, got == kGarbage, t, t, true, true});
  }
  if (nbad > 4) bad += "(" + std::to_string(nbad) + " sectors in all)\n";
  return bad;
}

void SectorModel::prune() {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t t = clock_.load() + 1;
  for (auto& h : hist_) {
    std::vector<W> keep;
    for (const W& w : h) {
      if (readable(h, w, t, t) || survives_power_cut(h, w)) keep.push_back(w);
    }
    h.swap(keep);
  }
}

}  // namespace rbdcache::cache::testing
