#!/usr/bin/env bash
# Malformed handshakes and requests from a raw NBD client: each one is
# rejected the way the NBD protocol says (error reply or disconnect), and
# after each one a fresh client is still served correctly by the same,
# still running, server.
source "$(dirname "$0")/lib.sh" "$@"
require python3

CLIENT="$(dirname "$0")/nbd_raw_client.py"
SIZE=$((64 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" random

# rbdcache's own, stricter choices where the spec leaves room (see
# nbd_raw_client.py --help).
STRICT=()
[ "$NBD_TEST_SERVER" = rbdcache ] && STRICT=(--strict)

start_server "$origin"

# run_case NAME: run one case, then check that the server survived and
# that a new client can write, read back and flush.
run_case() {
  local name=$1
  shift
  log "case $name"
  python3 "$CLIENT" "$SOCK" "$name" --size "$SIZE" "${STRICT[@]}" "$@" || fail "case $name"
  server_alive || fail "server died after case $name"
  python3 "$CLIENT" "$SOCK" fresh --size "$SIZE" || fail "fresh client after case $name"
  server_alive || fail "server died after a fresh client (case $name)"
}

run_case fresh
run_case commands
run_case export_name
run_case abort
# Handshake phase.
run_case bad_client_flags
run_case bad_option_magic
run_case oversize_option
run_case oversize_option_claim
run_case oversize_option_list
run_case unknown_option
if [ "$NBD_TEST_SERVER" != nbdkit ]; then
  # nbdkit's file plugin accepts any export name.
  run_case go_unknown_export
fi
# Transmission phase.
run_case bad_request_magic
run_case read_out_of_range
run_case write_out_of_range
run_case read_oversize
run_case write_oversize
run_case unknown_command
run_case unknown_flags
run_case half_header
run_case half_write_payload
run_case half_write_payload_reset
run_case disc_with_outstanding

# Many abrupt clients at once, then a fresh one.
pids=()
for i in $(seq 1 8); do
  python3 "$CLIENT" "$SOCK" half_write_payload_reset --size "$SIZE" &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || fail "concurrent abrupt client $p failed"
done
server_alive || fail "server died after concurrent abrupt clients"
python3 "$CLIENT" "$SOCK" fresh --size "$SIZE" || fail "fresh client after concurrent abrupt clients"

stop_server
expect_clean_exit "after malformed input"

# A read-only export rejects writes with EPERM.
start_server "$origin" --read-only
python3 "$CLIENT" "$SOCK" read_only --size "$SIZE" "${STRICT[@]}" || fail "case read_only"
server_alive || fail "server died after case read_only"
stop_server
expect_clean_exit "read-only export"

log "PASS"
