// CRC32C throughput (ISA-L crc32_iscsi) at the sizes the metadata log and a
// data checksum would use.
#include <benchmark/benchmark.h>

#include <vector>

#include "rbdcache/crc32c.h"

namespace {

void BM_Crc32c(benchmark::State& state) {
  std::vector<std::byte> buf(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 131 + 7);
  uint32_t crc = 0;
  for (auto _ : state) {
    crc = rbdcache::crc32c_extend(crc, buf);
    benchmark::DoNotOptimize(crc);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32c)->Arg(64)->Arg(4096)->Arg(65536)->Arg(1 << 20);

}  // namespace

BENCHMARK_MAIN();
