#!/usr/bin/env bash
# The warm set survives kill -9.  A hot set of 64 KiB blocks (some of them
# written, so dirty) is read in a shuffled order until the cache serves it
# (read hits grow); a FLUSH commits the cache's metadata; a measurement pass
# records the hit ratio (read_hits/read_misses deltas of the SIGUSR1
# statistics).  The server is killed with SIGKILL and restarted on the same
# cache: it comes back with at least the blocks it had at the FLUSH and
# exactly the same dirty data, and the same measurement pass hits at least
# 0.95 times as often as before.  The data read is checked as well.
source "$(dirname "$0")/lib-cache.sh" "$@"
require qemu-io

SIZE=$((64 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" zero
make_cache c 128M 16M
# No writeback, no bypass of sequential runs: the cache keeps what it gets.
opts=(--dirty-high 100 --dirty-low 100 --max-dirty-age 3600 --sequential-cutoff 0)

# The hot set: every other 64 KiB block of the first 40 MiB (320 blocks).
# Blocks 0, 20, 40... are written with a pattern (dirty); the others read
# the origin's zeroes.  One pass reads each block once, shuffled.
python3 - "$T" <<'EOF'
import random, sys
t = sys.argv[1]
blocks = [2 * i for i in range(320)]
written = set(blocks[::10])
rnd = random.Random(1234)
order = blocks[:]
rnd.shuffle(order)
with open(t + "/pass.cmds", "w") as f:
    for b in order:
        pat = (0x40 + b % 64) if b in written else 0
        f.write("read -P %d %d 65536\n" % (pat, b * 65536))
with open(t + "/write.cmds", "w") as f:
    for b in sorted(written):
        f.write("write -P %d %d 65536\n" % (0x40 + b % 64, b * 65536))
    f.write("flush\n")
EOF
pass_args=()
while read -r line; do pass_args+=(-c "$line"); done <"$T/pass.cmds"
write_args=()
while read -r line; do write_args+=(-c "$line"); done <"$T/write.cmds"
READS=${#pass_args[@]}
READS=$((READS / 2))

# run_pass: one pass over the hot set; sets HITS and MISSES (deltas).
run_pass() {
  local h0 m0
  get_stats
  h0=$(stat_field read_hits) m0=$(stat_field read_misses)
  qemu_io "$URI" "${pass_args[@]}"
  get_stats
  HITS=$(($(stat_field read_hits) - h0))
  MISSES=$(($(stat_field read_misses) - m0))
  [ $((HITS + MISSES)) -gt 0 ] || fail "a pass of $READS reads counted no hit and no miss: $STATS"
}

start_cache_server "$origin" writeback "${opts[@]}"
qemu_io "$URI" "${write_args[@]}"

# Warm up: until a pass is (almost) all hits.
warm=0
for ((p = 0; p < 20; p++)); do
  run_pass
  log "warm-up pass $p: $HITS hits, $MISSES misses"
  if [ "$MISSES" -le $(((HITS + MISSES) / 50)) ] && [ "$HITS" -gt 0 ]; then
    warm=1
    break
  fi
done
[ $warm = 1 ] || fail "the hot set is still missing after 20 passes: $HITS hits, $MISSES misses"

# Commit: a FLUSH makes the cache's data and metadata durable.
qemu_io "$URI" -c flush
get_stats
mapped_flushed=$(stat_field mapped_blocks)
dirty_flushed=$(stat_field dirty_bytes)
[ "$dirty_flushed" -gt 0 ] || fail "the written blocks are not dirty: $STATS"

run_pass
pre_hits=$HITS pre_misses=$MISSES
log "before kill -9: $pre_hits hits, $pre_misses misses"

stop_server "$SERVER_PID" KILL
start_cache_server "$origin" writeback "${opts[@]}"
get_stats
[ "$(stat_field mapped_blocks)" -ge "$mapped_flushed" ] ||
  fail "the cache lost blocks in the kill: $mapped_flushed mapped at the FLUSH, now $STATS"
[ "$(stat_field dirty_bytes)" = "$dirty_flushed" ] ||
  fail "dirty data changed across the kill: $dirty_flushed bytes at the FLUSH, now $STATS"

run_pass
post_hits=$HITS post_misses=$MISSES
log "after kill -9 and restart: $post_hits hits, $post_misses misses"

python3 - "$pre_hits" "$pre_misses" "$post_hits" "$post_misses" <<'EOF' ||
import sys
ph, pm, qh, qm = map(int, sys.argv[1:])
pre, post = ph / (ph + pm), qh / (qh + qm)
print("hit ratio before %.3f, after %.3f" % (pre, post), file=sys.stderr)
sys.exit(0 if post >= 0.95 * pre else 1)
EOF
  fail "the hit ratio after kill -9 and restart is below 0.95x the one before"

stop_server
expect_clean_exit "after the measurement"
log "PASS"
