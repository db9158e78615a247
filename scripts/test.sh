#!/usr/bin/env bash
# Installs what the tests need, builds rbdcache four ways and runs every
# test suite:
#   build-test   g++, warnings as errors: unit, integration, metadata tests,
#                then the micro-benchmark smoke run (meson test --benchmark)
#   build-asan   g++ with AddressSanitizer + UndefinedBehaviorSanitizer:
#                the same tests but the VM ones (the plain build runs those)
#   build-tsan   g++ with ThreadSanitizer: the unit (engine included) and
#                metadata-log suites, but for their one-thread tests;
#                suppressions in tests/tsan.supp
#   build-fuzz   clang + libFuzzer (+ASan/UBSan): short fuzzing runs
# Ends with one line "tests: N passed, N failed, N skipped".
#
#   scripts/test.sh                 everything
#   scripts/test.sh --quick         only build-test (no sanitizers, no fuzzing)
# Extra arguments after -- go to every `meson test` (e.g. -- --suite unit).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

quick=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

scripts/install-deps.sh

# --- Ceph test cluster (tests/rbd) ---------------------------------------
# One throw-away cluster (scripts/dev-ceph.sh: mon + memstore OSD on
# loopback) serves every build's rbd tests; they find it through the env
# file in RBDCACHE_TEST_CEPH_ENV. It is stopped when this script exits,
# whatever the outcome. If it cannot start, the rbd tests skip (which CI
# reports as a failure).
CEPH_TEST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/rbdcache-test-ceph.XXXXXX")
stop_test_ceph() {
  scripts/dev-ceph.sh stop --dir "$CEPH_TEST_DIR/cluster" >/dev/null 2>&1 || true
  rm -rf "$CEPH_TEST_DIR"
}
trap stop_test_ceph EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "== Ceph test cluster"
if scripts/dev-ceph.sh start --dir "$CEPH_TEST_DIR/cluster" &&
   scripts/dev-ceph.sh env --dir "$CEPH_TEST_DIR/cluster" >"$CEPH_TEST_DIR/env"; then
  export RBDCACHE_TEST_CEPH_ENV="$CEPH_TEST_DIR/env"
else
  echo "test.sh: the Ceph test cluster did not start; the rbd tests will skip" >&2
  unset RBDCACHE_TEST_CEPH_ENV
fi
# --- end of Ceph test cluster --------------------------------------------

# In CI nothing may be skipped (the kernel tests run in a guest, tests/vm).
export RBDCACHE_ALLOWED_SKIPS="${RBDCACHE_ALLOWED_SKIPS:-}"
JOBS=$(nproc)
failed_builds=0

setup() {  # setup DIR [meson options...]
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
  ninja -C "$dir"
}

run_tests() {  # run_tests DIR [meson test options...]
  local dir=$1; shift
  meson test -C "$dir" --print-errorlogs --num-processes "$JOBS" "$@" "${extra[@]}" || failed_builds=$((failed_builds + 1))
}

echo "== build-test: g++, -Werror"
setup build-test --buildtype=debugoptimized -Dwerror=true
run_tests build-test --no-suite fuzz
run_tests build-test --benchmark --logbase benchlog

if [ $quick -eq 0 ]; then
  echo "== build-asan: AddressSanitizer + UndefinedBehaviorSanitizer"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  setup build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true
  run_tests build-asan --no-suite fuzz --no-suite vm --timeout-multiplier 3

  echo "== build-tsan: ThreadSanitizer"
  # The gtest suites only (unit: engine tests included; metalog): the shell
  # suites run servers that the plain and ASan builds cover.
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp"
  setup build-tsan --buildtype=debug -Db_sanitize=thread -Db_lundef=false \
    -Dbenchmarks=disabled -Dwerror=true
  run_tests build-tsan --suite unit --suite metalog --no-suite one-thread --timeout-multiplier 3

  echo "== build-fuzz: clang + libFuzzer"
  if [ ! -f build-fuzz/build.ninja ]; then
    CXX=clang++ meson setup build-fuzz --buildtype=debugoptimized -Dfuzzing=true \
      -Db_sanitize=address,undefined -Db_lundef=false -Dtests=disabled -Dbenchmarks=disabled \
      -Dcpp_args=-fsanitize=fuzzer-no-link >/dev/null
  fi
  ninja -C build-fuzz
  run_tests build-fuzz --suite fuzz
fi

dirs=(build-test)
[ $quick -eq 0 ] && dirs+=(build-asan build-tsan build-fuzz)
status=0
python3 scripts/test-summary.py "${dirs[@]}" || status=$?
if [ $failed_builds -ne 0 ] && [ $status -eq 0 ]; then
  echo "test.sh: a meson test run failed" >&2
  exit 1
fi
exit $status
