#!/usr/bin/env bash
# `rbdcache serve --metrics`: the Prometheus endpoint of a running server.
#   writeback: qemu-io writes and reads through a cache, and curl scrapes
#     GET /metrics before and after.  Every scrape is 200 with the text
#     exposition content type and parses as exposition format 0.0.4 (HELP and
#     TYPE before the samples, counters named _total, valid label escapes, no
#     duplicate series).  The write and read counters rose, no counter fell,
#     dirty bytes are above 0, the mode gauge says writeback and rbdcache_info
#     names the origin.  Other paths get 404, POST gets 405, concurrent scrapes
#     all succeed, and the port is closed once the server has stopped.
#   writethrough: after writes, no dirty bytes and the mode gauge says so.
# The server is asked for port 0 and must log `metrics at http://ADDR:PORT/metrics`.
# shellcheck source=../cache_integration/lib-cache.sh
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require qemu-io curl

SIZE=$((32 * 1048576))

# wait_metrics_url: waits for the server's "metrics at URL" line; sets METRICS_URL.
wait_metrics_url() {
  local i
  METRICS_URL=
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    METRICS_URL=$(grep -o 'metrics at http://[^[:space:]]*/metrics' "$SERVER_LOG" | head -n 1 |
      sed 's/^metrics at //')
    [ -n "$METRICS_URL" ] && return 0
    server_alive "$SERVER_PID" || fail "the server exited before logging its metrics URL"
    sleep 0.1
  done
  fail "no 'metrics at http://ADDR:PORT/metrics' line in the server log after ${READY_TIMEOUT}s"
}

# parse_exposition IN OUT: checks that IN is valid text exposition format and
# writes its series to OUT as JSON: {"name{labels as written}": value}.
parse_exposition() {
  python3 - "$1" "$2" <<'PY' || fail "$1 is not valid Prometheus text exposition"
import json, math, re, sys

NAME = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*')
LABEL = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*')
text = open(sys.argv[1], encoding="utf-8").read()
errors, series, types, helps, seen_samples, done = [], {}, {}, {}, set(), set()
if not text.endswith("\n"):
    errors.append("does not end with a newline")
last = None
for n, line in enumerate(text.split("\n")[:-1], 1):
    def err(why):
        errors.append("line %d: %s: %r" % (n, why, line))
    if line == "":
        continue
    if line.startswith("#"):
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
            name = parts[2]
            if not NAME.fullmatch(name):
                err("bad metric name")
            if name in seen_samples:
                err("HELP or TYPE after the samples")
            table = helps if parts[1] == "HELP" else types
            if name in table:
                err("second " + parts[1])
            arg = parts[3] if len(parts) > 3 else ""
            if parts[1] == "TYPE" and arg not in ("counter", "gauge", "histogram", "summary", "untyped"):
                err("unknown type")
            table[name] = arg
        continue
    m = NAME.match(line)
    if not m:
        err("bad metric name")
        continue
    name, pos, labels = m.group(0), m.end(), {}
    if pos < len(line) and line[pos] == "{":
        pos += 1
        while pos < len(line) and line[pos] != "}":
            lm = LABEL.match(line, pos)
            if not lm or line[lm.end():lm.end() + 2] != '="':
                err("bad label")
                break
            pos, value = lm.end() + 2, ""
            while pos < len(line) and line[pos] != '"':
                if line[pos] == "\\":
                    esc = line[pos + 1:pos + 2]
                    if esc not in ("\\", '"', "n"):
                        err("bad escape in a label value")
                    value += "\n" if esc == "n" else esc
                    pos += 2
                else:
                    value += line[pos]
                    pos += 1
            if lm.group(0) in labels:
                err("repeated label")
            labels[lm.group(0)] = value
            pos += 1
            if pos < len(line) and line[pos] == ",":
                pos += 1
        if pos >= len(line):
            err("unterminated label set")
            continue
        pos += 1
    if line[pos:pos + 1] != " ":
        err("no space before the value")
        continue
    fields = line[pos + 1:].split(" ")
    if len(fields) not in (1, 2):
        err("bad value")
        continue
    try:
        value = float(fields[0])  # accepts NaN, +Inf, -Inf as Prometheus does
    except ValueError:
        err("value is not a number")
        continue
    if name not in types or name not in helps:
        err("sample without HELP and TYPE")
    elif types[name] == "counter":
        if not name.endswith("_total"):
            err("counter not named _total")
        if value < 0 or math.isnan(value):
            err("negative or NaN counter")
    if name != last:
        if name in done:
            err("the samples of a family are not together")
        if last is not None:
            done.add(last)
        last = name
    seen_samples.add(name)
    key = line[:pos]
    if key in series:
        err("duplicate series")
    series[key] = value
for name in set(types) | set(helps):
    if name not in seen_samples:
        errors.append("%s has HELP or TYPE but no sample" % name)
if not series:
    errors.append("no samples")
for e in errors:
    print("exposition: " + e, file=sys.stderr)
json.dump(series, open(sys.argv[2], "w"))
sys.exit(1 if errors else 0)
PY
}

# scrape NAME: GET $METRICS_URL into $T/NAME.prom, check the status line and
# content type, and parse it into $T/NAME.json.
scrape() {
  local out="$T/$1.prom" code
  code=$(curl -sS --max-time 10 -D "$T/$1.headers" -o "$out" -w '%{http_code}' "$METRICS_URL") ||
    fail "curl $METRICS_URL failed"
  [ "$code" = 200 ] || fail "scrape $1: HTTP status $code"
  grep -qi '^content-type: text/plain; version=0.0.4' "$T/$1.headers" ||
    fail "scrape $1: wrong content type: $(grep -i '^content-type' "$T/$1.headers")"
  parse_exposition "$out" "$T/$1.json"
}

# metric NAME SERIES: the value of SERIES (as written, labels included) in
# scrape NAME, printed as an integer when it is one; "absent" if missing.
metric() {
  python3 - "$T/$1.json" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("absent" if v is None else (int(v) if v == int(v) else v))
PY
}

# sum_of NAME SERIES...: the sum of the series in scrape NAME; fails if one is missing.
sum_of() {
  local scrape_name=$1 total=0 v s
  shift
  for s in "$@"; do
    v=$(metric "$scrape_name" "$s")
    [ "$v" != absent ] || fail "scrape $scrape_name has no series $s"
    total=$((total + v))
  done
  echo "$total"
}

# http_code [CURL-ARGS...] PATH: the status of a request for PATH on the metrics server.
http_code() {
  local path=${*: -1} base=${METRICS_URL%/metrics}
  curl -s --max-time 10 -o /dev/null -w '%{http_code}' "${@:1:$#-1}" "$base$path"
}

# --- writeback ---------------------------------------------------------------
origin="$T/origin.img"
make_origin "$origin" "$SIZE" random
make_cache wb 64M 16M
# Writeback must not start by itself: the dirty bytes stay.
start_cache_server "$origin" writeback --metrics 127.0.0.1:0 \
  --dirty-high 90 --dirty-low 80 --max-dirty-age 3600
wait_metrics_url
log "metrics at $METRICS_URL"
case $METRICS_URL in
  http://127.0.0.1:*/metrics) ;;
  *) fail "unexpected metrics URL $METRICS_URL" ;;
esac

scrape before
writes_before=$(sum_of before rbdcache_io_write_hits_total rbdcache_io_write_misses_total)
reads_before=$(sum_of before rbdcache_io_read_hits_total rbdcache_io_read_misses_total)
[ "$(metric before 'rbdcache_mode{mode="writeback"}')" = 1 ] || fail "mode gauge is not writeback"
[ "$(metric before 'rbdcache_mode{mode="writethrough"}')" = 0 ] || fail "writethrough mode gauge is not 0"
[ "$(metric before 'rbdcache_mode{mode="passthrough"}')" = 0 ] || fail "passthrough mode gauge is not 0"
[ "$(metric before rbdcache_origin_size_bytes)" = "$SIZE" ] ||
  fail "rbdcache_origin_size_bytes is $(metric before rbdcache_origin_size_bytes), expected $SIZE"
[ "$(metric before rbdcache_cache_blocks)" -gt 0 ] || fail "rbdcache_cache_blocks is not above 0"
python3 - "$T/before.json" <<'PY' || fail "no rbdcache_info series naming the origin"
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if any(k.startswith("rbdcache_info{") and "origin.img" in k and v == 1 for k, v in d.items()) else 1)
PY

qemu_io "$URI" -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 4M 2M' -c 'write -P 0x11 10M 64k' \
  -c "write -P 0x22 $((9 * 1048576 + 12345)) 4321" -c flush
qemu_io "$URI" -c 'read -P 0xab 0 1M' -c 'read -P 0xcd 4M 2M' -c 'read 20M 1M' -c 'read 30M 64k'

scrape after
writes_after=$(sum_of after rbdcache_io_write_hits_total rbdcache_io_write_misses_total)
reads_after=$(sum_of after rbdcache_io_read_hits_total rbdcache_io_read_misses_total)
[ "$writes_after" -gt "$writes_before" ] ||
  fail "write hits + misses did not rise: $writes_before -> $writes_after"
[ "$reads_after" -gt "$reads_before" ] ||
  fail "read hits + misses did not rise: $reads_before -> $reads_after"
[ "$(metric after rbdcache_cache_dirty_bytes)" -gt 0 ] ||
  fail "rbdcache_cache_dirty_bytes is $(metric after rbdcache_cache_dirty_bytes) after writeback writes"
[ "$(metric after rbdcache_cache_dirty_blocks)" -gt 0 ] || fail "rbdcache_cache_dirty_blocks is not above 0"
[ "$(metric after rbdcache_writeback_errors_total)" = 0 ] || fail "writeback errors reported"
[ "$(metric after rbdcache_writeback_written_back_bytes_total)" = 0 ] || fail "wrote back too early"
# Every number of `rbdcache status --json` has a metric, and the values agree
# (nothing changes between the two: no I/O, no writeback).
"$RBDCACHE" status --control "${SOCK%.sock}.ctl" --json >"$T/status.json" 2>"$T/status.err" ||
  { cat "$T/status.err" >&2; fail "rbdcache status --json failed"; }
scrape with_status
python3 - "$T/status.json" "$T/with_status.json" <<'PY' || fail "the metrics do not cover the status document"
import json, sys
status, series = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
problems = []
def check(section, field, v):
    if isinstance(v, dict):
        for k, w in v.items():
            check(section + "_" + field if section else field, k, w)
        return
    if not isinstance(v, (int, float)) or v is None:
        return  # strings are labels (origin, mode, cache_uuid); null is omitted
    name = "rbdcache_" + (section + "_" if section else "") + field
    got = series.get(name, series.get(name + "_total"))
    if got is None:
        problems.append("%s.%s has no metric %s" % (section, field, name))
    elif not isinstance(v, float) and float(v) != got:
        problems.append("%s is %r, status says %r" % (name, got, v))
for k, v in status.items():
    check("", k, v)
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

# Counters never fall between scrapes.
python3 - "$T/before.json" "$T/after.json" <<'PY' || fail "a counter fell between two scrapes"
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
bad = [k for k, v in a.items() if k.split("{")[0].endswith("_total") and b.get(k, -1) < v]
if bad:
    print("fell or vanished:", bad, file=sys.stderr)
    sys.exit(1)
PY

# The rest of the HTTP surface.
[ "$(http_code /nope)" = 404 ] || fail "GET /nope is not 404"
[ "$(http_code /)" = 200 ] || fail "GET / is not 200"
[ "$(http_code -X POST /metrics)" = 405 ] || fail "POST /metrics is not 405"
[ "$(http_code -I /metrics)" = 200 ] || fail "HEAD /metrics is not 200"
pids=()
for i in $(seq 1 10); do
  curl -s --max-time 10 -o "$T/concurrent$i.prom" -w '%{http_code}' "$METRICS_URL" >"$T/concurrent$i.code" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent scrape failed"; done
for i in $(seq 1 10); do
  [ "$(cat "$T/concurrent$i.code")" = 200 ] || fail "concurrent scrape $i: HTTP $(cat "$T/concurrent$i.code")"
  parse_exposition "$T/concurrent$i.prom" "$T/concurrent$i.json"
done

stop_server "$SERVER_PID"
expect_clean_exit "writeback"
if curl -s --max-time 5 -o /dev/null "$METRICS_URL"; then
  fail "the metrics port still answers after the server stopped"
fi

# --- writethrough -------------------------------------------------------------
make_origin "$origin" "$SIZE" random
make_cache wt 64M 16M
start_cache_server "$origin" writethrough --metrics 127.0.0.1:0
wait_metrics_url
qemu_io "$URI" -c 'write -P 0x5a 0 2M' -c 'write -P 0x5b 8M 64k' -c flush
scrape writethrough
[ "$(metric writethrough 'rbdcache_mode{mode="writethrough"}')" = 1 ] || fail "mode gauge is not writethrough"
[ "$(metric writethrough 'rbdcache_mode{mode="writeback"}')" = 0 ] || fail "writeback mode gauge is not 0"
[ "$(metric writethrough rbdcache_cache_dirty_bytes)" = 0 ] || fail "writethrough: dirty bytes in the cache"
[ "$(sum_of writethrough rbdcache_io_write_hits_total rbdcache_io_write_misses_total)" -gt 0 ] ||
  fail "writethrough: no writes counted"
stop_server "$SERVER_PID"
expect_clean_exit "writethrough"

log "PASS"
