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
# The TSan and fuzz builds compile only what their suites use. The last
# three compile in the background, at nice 19, while earlier tests run.
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
    meson configure "$dir" "$@" >/dev/null || return
  else
    meson setup "$dir" "$@" >/dev/null || return
  fi
  ninja -C "$dir"
}

run_tests() {  # run_tests DIR [meson test options...]
  local dir=$1; shift
  meson test -C "$dir" --print-errorlogs --num-processes "$JOBS" "$@" "${extra[@]}" || failed_builds=$((failed_builds + 1))
}

# setup_for_suites DIR "SUITE OPTIONS" [meson options...]: configures DIR and
# builds only the targets that the tests of those suites need (the TSan and
# fuzz builds run a few suites; building the rest would only cost time).
# Run the tests with --no-rebuild.
setup_for_suites() {
  local dir=$1 suites=$2 targets; shift 2
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null || return
  else
    meson setup "$dir" "$@" >/dev/null || return
  fi
  # shellcheck disable=SC2086 # the suite options are words
  targets=$(python3 scripts/test-targets.py "$dir" $suites) || return
  # shellcheck disable=SC2086 # one target per word
  ninja -C "$dir" $targets
}

# The sanitizer and fuzz builds compile in the background, one after the
# other, at the lowest CPU priority (nice 19), while the tests of the builds
# before them run: the tests wait on sockets, guests and the cluster much of
# the time, and the compiler takes only what they leave. Each build's output
# goes to BG_LOGS/DIR.log, its exit status to BG_LOGS/DIR.rc; wait_build
# prints the log and fails the run if the build failed.
BG_LOGS=$(mktemp -d "${TMPDIR:-/tmp}/rbdcache-test-builds.XXXXXX")
bg_pid=
stop_background_builds() {
  [ -z "$bg_pid" ] || kill -- -"$bg_pid" 2>/dev/null || true
  rm -rf "$BG_LOGS"
}
trap 'stop_background_builds; stop_test_ceph' EXIT

build_in_background() {  # build_in_background DIR FUNCTION [ARGS...]
  local dir=$1 rc=0; shift
  "$@" >"$BG_LOGS/$dir.log" 2>&1 || rc=$?
  echo "$rc" >"$BG_LOGS/$dir.rc"
}

wait_build() {  # wait_build DIR: waits for DIR's background build
  local dir=$1 rc
  until [ -f "$BG_LOGS/$dir.rc" ]; do
    if ! kill -0 "$bg_pid" 2>/dev/null && [ ! -f "$BG_LOGS/$dir.rc" ]; then
      echo "test.sh: the background builds stopped before $dir was built" >&2
      cat "$BG_LOGS/$dir.log" 2>/dev/null >&2 || true
      exit 1
    fi
    sleep 2
  done
  cat "$BG_LOGS/$dir.log"
  rc=$(cat "$BG_LOGS/$dir.rc")
  if [ "$rc" != 0 ]; then
    echo "test.sh: building $dir failed (exit $rc)" >&2
    exit 1
  fi
}

tsan_suites="--suite unit --suite metalog --no-suite one-thread"
build_sanitizers() {
  build_in_background build-asan \
    setup build-asan --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true
  build_in_background build-tsan \
    setup_for_suites build-tsan "$tsan_suites" --buildtype=debug -Db_sanitize=thread \
    -Db_lundef=false -Dbenchmarks=disabled -Dwerror=true
  (export CXX=clang++
   build_in_background build-fuzz \
     setup_for_suites build-fuzz "--suite fuzz" --buildtype=debugoptimized -Dfuzzing=true \
     -Db_sanitize=address,undefined -Db_lundef=false -Dtests=disabled -Dbenchmarks=disabled \
     -Dcpp_args=-fsanitize=fuzzer-no-link)
}

echo "== build-test: g++, -Werror"
setup build-test --buildtype=debugoptimized -Dwerror=true
if [ $quick -eq 0 ]; then
  echo "== build-asan, build-tsan, build-fuzz: compiling in the background at nice 19"
  # A process group of its own, so that the EXIT trap stops all of it.
  set -m
  (renice -n 19 -p "$BASHPID" >/dev/null; build_sanitizers) &
  bg_pid=$!
  set +m
fi
run_tests build-test --no-suite fuzz
run_tests build-test --benchmark --logbase benchlog

if [ $quick -eq 0 ]; then
  echo "== build-asan: AddressSanitizer + UndefinedBehaviorSanitizer"
  wait_build build-asan
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  run_tests build-asan --no-suite fuzz --no-suite vm --timeout-multiplier 3

  echo "== build-tsan: ThreadSanitizer"
  # The gtest suites only (unit: engine tests included; metalog): the shell
  # suites run servers that the plain and ASan builds cover.
  wait_build build-tsan
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp"
  # shellcheck disable=SC2086 # the suite options are words
  run_tests build-tsan $tsan_suites --no-rebuild --timeout-multiplier 3

  echo "== build-fuzz: clang + libFuzzer"
  wait_build build-fuzz
  run_tests build-fuzz --suite fuzz --no-rebuild
  wait "$bg_pid" || true
  bg_pid=
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
