#!/usr/bin/env python3
"""Writes the markdown report of scripts/bench-peers.sh and its chart data.

    peers-report.py RESULTS MD_FILE CHART_DIR

RESULTS holds meta.json, system-LAT.json and LAT/TARGET/WORKLOAD.json (fio
JSON, with WORKLOAD.json.stats: rbdcache's statistics before and after);
CHART_DIR gets chart.gp and its .dat files, for gnuplot to draw chart.png.
A figure that is missing from RESULTS shows as "-" or "n/a".
"""
import json, os, sys

res, md_path, chart = sys.argv[1:4]
meta = json.load(open(os.path.join(res, "meta.json")))
LAT = "lat%s" % meta["latency_ms"]
units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
ws_b = int(meta["ws"][:-1]) * units[meta["ws"][-1].upper()] if meta["ws"][-1].upper() in units else int(meta["ws"])
lat_mean = float(meta["latency_ms"]) / 2

def load(lat, target, w):
    p = os.path.join(res, lat, target, w + ".json")
    if not os.path.exists(p):
        return None
    text = open(p).read()
    try:
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        return None
    r, wr = job["read"], job["write"]
    side = wr if w.startswith("rw") or w == "seqw" else r
    out = {"iops": r["iops"] + wr["iops"], "bw": (r["bw_bytes"] + wr["bw_bytes"]) / 1e6,
           "mean": side["lat_ns"]["mean"] / 1000.0,
           "p99": side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0,
           "wmean": wr["lat_ns"]["mean"] / 1000.0, "hit": None}
    sp = p + ".stats"
    if os.path.exists(sp):
        s = json.load(open(sp))
        a, b = s["before"], s["after"]
        h = b.get("read_hits", 0) - a.get("read_hits", 0)
        m = b.get("read_misses", 0) - a.get("read_misses", 0)
        if h + m:
            out["hit"] = h / (h + m)
    return out

def system(lat):
    p = os.path.join(res, "system-%s.json" % lat)
    return json.load(open(p)) if os.path.exists(p) else None

WORKLOADS = [
    ("cold1", "Cold 4K random read, QD1 (fresh cache, 64K-aligned offsets, %d reads)" % meta["cold_ios"]),
    ("cold32", "Cold 4K random read, QD32 (fresh cache, 64K-aligned offsets, %d reads)" % meta["cold_ios"]),
    ("rr1", "4K random read, QD1 (warm)"),
    ("rr32", "4K random read, QD32 (warm)"),
    ("rw1", "4K random write, QD1"),
    ("rw32", "4K random write, QD32"),
    ("mix", "70/30 random read/write, zipf(1.2), 4K, QD32 (warm)"),
    ("seqw", "1 MiB sequential write, QD8"),
    ("mc4", "4K random read, 4 connections x QD8 (warm)"),
]
DESC = {
    "rbdcache-wb-warm": "rbdcache writeback, after one full read pass of the working set",
    "rbdcache-wb-cold": "rbdcache writeback, freshly formatted cache",
    "rbdcache-wt-warm": "rbdcache writethrough, warm",
    "rbdcache-wt-cold": "rbdcache writethrough, fresh cache",
    "rbdcache-pt": "rbdcache passthrough (caches nothing: rbdcache's NBD server on librbd)",
    "nbdkit-cache-rbd-warm": "nbdkit --filter=cache (writeback, cache-on-read) over qemu-nbd rbd, warm",
    "nbdkit-cache-rbd-cold": "nbdkit --filter=cache over qemu-nbd rbd, empty cache",
    "qemu-nbd-rbd": "qemu-nbd -t --cache=none over rbd: (no cache)",
    "librbd": "fio rbd engine (librbd directly, no NBD)",
    "rbdcache-file-wb-warm": "rbdcache writeback over the file origin, warm",
    "nbdkit-cache-file-warm": "nbdkit --filter=cache file ORIGIN, warm",
    "qemu-nbd-file": "qemu-nbd -t --cache=none --aio=io_uring, file",
    "nbdkit-file": "nbdkit file plugin (page cache): the NBD transport limit",
    "fio-direct": "fio io_uring O_DIRECT on a file: the device limit",
}
RBD_T = ["rbdcache-wb-warm", "rbdcache-wb-cold", "rbdcache-wt-warm", "rbdcache-wt-cold", "rbdcache-pt",
         "nbdkit-cache-rbd-warm", "nbdkit-cache-rbd-cold", "qemu-nbd-rbd", "librbd"]
FILE_T = ["rbdcache-file-wb-warm", "nbdkit-cache-file-warm", "qemu-nbd-file", "nbdkit-file", "fio-direct"]
SECTIONS = [("lat0", "RBD origin, no injected latency", RBD_T),
            (LAT, "RBD origin, latency injected (`--latency %s`)" % meta["latency_ms"], RBD_T),
            ("local", "file origin on the cache's disk, and the limits", FILE_T)]
NOCACHE = "qemu-nbd-rbd" if meta["qemu_rbd"] else "rbdcache-pt"

def ref_target(section, w):
    if section == "local":
        return "rbdcache-file-wb-warm"
    return "rbdcache-wb-cold" if w.startswith("cold") else "rbdcache-wb-warm"

def fmt_iops(x):
    return "%.1fk" % (x / 1000) if x >= 1000 else "%.0f" % x

def fmt_us(x):
    return "%.0f" % x if x >= 100 else "%.1f" % x

L = []
P = L.append
P("# rbdcache against its peers")
P("")
P("Written by `scripts/bench-peers.sh`; do not edit by hand. Every target ran in the same run, "
  "on the same machine, with the same image sizes, one after another.")
P("")
P("**These numbers are noisy.** The machine is small and shared with other builds while the "
  "benchmark runs (load average %s at the start, %s at the end, on %d CPUs). Absolute IOPS move "
  "from run to run; the ratios between targets measured in this one run are what count, and "
  "even they move by 10-20 %% between runs at runtimes this short."
  % (meta["load_start"], meta["load_end"], meta["nproc"]))
P("")
P("## Machine and run")
P("")
P("- %s, kernel %s, %d CPUs (%s), %s RAM" % (meta["os"], meta["kernel"], meta["nproc"], meta["cpu"], meta["mem"]))
P("- disk under test: %s; the cache files, the file origin and nbdkit's cache files all live on it" % meta["disk"])
P("- load average (1/5/15 min): %s at start, %s at end" % (meta["load_start"], meta["load_end"]))
P("- Ceph %s: one monitor and one memstore OSD on loopback (`scripts/dev-ceph.sh`), cephx, user client.rbdcache; "
  "the RBD image is filled before the runs" % meta["ceph"].split()[-1])
P("- %s, %s, nbdkit %s" % (meta["fio"], meta["qemu"], meta["nbdkit"].split()[-1]))
P("- image (RBD and file origin) %s; working set of the timed runs %s from offset 0; cache device %s "
  "(rbdcache, 64 KiB blocks) and nbdkit `cache-max-size` the same" % (meta["size"], meta["ws"], meta["cache"]))
P("- timed runs: %d s after %d s ramp%s; whole run %d min"
  % (meta["runtime"], meta["ramp"], " (`--quick`: a smoke run, one or two workloads per target, small sizes; its numbers mean nothing)" if meta["quick"] else "",
     meta["elapsed"] // 60))
lr0, lr1 = load("lat0", "librbd", "cold1"), load(LAT, "librbd", "cold1")
P("- latency injection: `dev-ceph.sh --latency %s` puts `ms inject delay type = osd`, "
  "`ms inject delay max = %s ms` in the clients' configuration: each OSD reply to a client is held "
  "for a random time up to %s ms, as on a networked cluster. Ceph's delayed delivery adds more than that "
  "nominal figure: a 4K QD1 random read through librbd took %s us mean with it and %s us without "
  "(the same holds with a 0.5 ms setting), so the \"latency injected\" tables model a slow remote "
  "cluster of about 4 ms per read"
  % (meta["latency_ms"], meta["latency_ms"], meta["latency_ms"],
     fmt_us(lr1["mean"]) if lr1 else "-", fmt_us(lr0["mean"]) if lr0 else "-"))
P("- librbd through fio's rbd engine runs with librbd's defaults (its own `rbd cache` on, writeback after the "
  "first flush); qemu-nbd with `--cache=none` turns it off; rbdcache uses librbd with its own cache in front")
if not meta["qemu_rbd"]:
    P("- **qemu-nbd has no rbd block driver here**: the \"no cache\" baseline is rbdcache's own passthrough mode over librbd")
P("")
args, skip = [], False
for a in meta["args"].split():
    if skip:
        skip = False
    elif a in ("--md", "--png", "--rbdcache", "--ceph-env", "--results", "--dir"):
        skip = True
    elif a not in ("--no-install", "--no-build", "--keep"):
        args.append(a)
P("Reproduce: `scripts/bench-peers.sh%s` (installs packages, builds into `build-bench/`, starts and "
  "stops its own Ceph cluster; `--help` lists the options)." % ("".join(" " + a for a in args)))
P("")

# ---- goals
goals = []
def goal(name, value, op, thr, detail, why=""):
    if value is None:
        goals.append((name, "n/a", "not measured in this run", detail, ""))
        return
    ok = value >= thr if op == ">=" else value <= thr
    if ok:
        short = ""
    elif op == ">=":
        short = "short by %.0f %% (needs %.2fx more)" % ((1 - value / thr) * 100, thr / value if value else float("inf"))
    else:
        short = "%.0f %% over the limit" % ((value / thr - 1) * 100)
    goals.append((name, "PASS" if ok else "MISS", "%.2fx (goal %s %.2fx)" % (value, op, thr), detail, short))

def ratio(a, b, key="iops"):
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]

g = load("lat0", "rbdcache-wb-warm", "rr32"); n = load("lat0", "nbdkit-cache-rbd-warm", "rr32")
d = load("local", "fio-direct", "rr32")
goal("Warm 4K randread QD32 vs nbdkit cache filter", ratio(g, n), ">=", 1.0,
     "rbdcache %s IOPS, nbdkit cache %s IOPS (RBD origin, warm)" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(n["iops"]) if n else "-"))
goal("Warm 4K randread QD32 vs the device limit", ratio(g, d), ">=", 0.85,
     "rbdcache %s IOPS, fio io_uring O_DIRECT %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(d["iops"]) if d else "-"))
g = load("lat0", "rbdcache-wb-warm", "rr1"); n = load("lat0", "nbdkit-cache-rbd-warm", "rr1")
goal("Warm 4K randread QD1 mean latency vs nbdkit cache filter", ratio(g, n, "mean"), "<=", 1.0,
     "rbdcache %s us, nbdkit cache %s us" % (fmt_us(g["mean"]) if g else "-", fmt_us(n["mean"]) if n else "-"))
g = load("lat0", "rbdcache-wb-warm", "rw32"); n = load("lat0", "nbdkit-cache-rbd-warm", "rw32")
q = load("local", "qemu-nbd-file", "rw32")
goal("Writeback 4K randwrite QD32 vs nbdkit cache filter (writeback)", ratio(g, n), ">=", 3.0,
     "rbdcache %s IOPS, nbdkit cache %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(n["iops"]) if n else "-"))
goal("Writeback 4K randwrite QD32 vs qemu-nbd --cache=none on a file on the same disk", ratio(g, q), ">=", 1.2,
     "rbdcache %s IOPS, qemu-nbd file %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(q["iops"]) if q else "-"))
g = load(LAT, "rbdcache-wb-warm", "rw1"); q = load(LAT, NOCACHE, "rw1")
goal("Writeback 4K randwrite QD1 mean latency, latency injected, vs %s" % NOCACHE, ratio(g, q, "mean"), "<=", 0.25,
     "rbdcache %s us, %s %s us" % (fmt_us(g["mean"]) if g else "-", NOCACHE, fmt_us(q["mean"]) if q else "-"))
for lat, label in ((LAT, "latency injected"), ("lat0", "no injected latency")):
    g = load(lat, "rbdcache-wb-cold", "cold1"); q = load(lat, NOCACHE, "cold1")
    hit = " (rbdcache hit ratio during the run %.0f %%)" % (100 * g["hit"]) if g and g["hit"] is not None else ""
    goal("Cold 4K randread QD1 mean latency, %s, vs %s" % (label, NOCACHE), ratio(g, q, "mean"), "<=", 1.15,
         "rbdcache %s us, %s %s us%s" % (fmt_us(g["mean"]) if g else "-", NOCACHE, fmt_us(q["mean"]) if q else "-", hit))
for lat, label in (("lat0", "no injected latency"), (LAT, "latency injected")):
    s = system(lat); lb = load(lat, "librbd", "seqw")
    if s is None or lb is None:
        if lat == "lat0" or not meta["quick"]:
            goal("Flush throughput vs librbd 1 MiB sequential write, %s" % label, None, ">=", 0.8, "")
        continue
    fl = s["dirty_bytes"] / s["flush_s"] / 1e6 if s["flush_s"] else 0
    goal("Flush throughput vs librbd 1 MiB sequential write, %s" % label, fl / lb["bw"] if lb["bw"] else None, ">=", 0.8,
         "wrote back %.0f MiB in %.1f s = %.0f MB/s; librbd 1 MiB seq write QD8 %.0f MB/s"
         % (s["dirty_bytes"] / 2**20, s["flush_s"], fl, lb["bw"]))
s = system("lat0")
if s:
    goal("Hit ratio after kill -9 vs before", s["hit_after"] / s["hit_before"] if s["hit_before"] else None, ">=", 0.95,
         "warm 4K randread hit ratio %.1f %% before, %.1f %% after kill -9 and restart"
         % (100 * s["hit_before"], 100 * s["hit_after"]))
else:
    goal("Hit ratio after kill -9 vs before", None, ">=", 0.95, "")

P("## Goals")
P("")
P("Each ratio compares two targets measured in this run.")
P("")
P("| goal | result | ratio | measured | shortfall |")
P("|---|---|---|---|---|")
for name, res_, r, detail, short in goals:
    P("| %s | **%s** | %s | %s | %s |" % (name, res_, r, detail, short))
P("")

# ---- why the misses
def iops(lat, t, w):
    r = load(lat, t, w)
    return r["iops"] if r else None
def mean(lat, t, w):
    r = load(lat, t, w)
    return r["mean"] if r else None
def x(a, b):
    return "%.2fx" % (a / b) if a and b else "-"
def stats_delta(lat, t, w, field):
    p = os.path.join(res, lat, t, w + ".json.stats")
    if not os.path.exists(p):
        return None
    st = json.load(open(p))
    return st["after"].get(field, 0) - st["before"].get(field, 0)
missed = {name for name, r_, *_ in goals if r_ == "MISS"}
why = []
if any(n.startswith("Warm 4K randread") for n in missed):
    nf, fd = iops("local", "nbdkit-file", "rr32"), iops("local", "fio-direct", "rr32")
    rcf, ncf = iops("local", "rbdcache-file-wb-warm", "rr32"), iops("local", "nbdkit-cache-file-warm", "rr32")
    why.append("**Warm reads.** nbdkit's cache filter keeps its cache in a temporary file that goes through "
               "the page cache (this machine has %s of RAM), so its warm hits are memory copies; rbdcache reads "
               "its cache device with O_DIRECT, so its floor is the device. At QD1 the device alone (fio "
               "O_DIRECT) takes %s us per 4K read and nbdkit's cached read %s us: no O_DIRECT cache can meet "
               "the QD1 latency goal against a page-cache peer; rbdcache adds %s us over the device. At QD32 "
               "on a 2-CPU machine the NBD client and server share the CPUs: even nbdkit's file plugin, "
               "serving from the page cache, reaches only %s of the device limit, so 0.85x the device is out "
               "of reach of any NBD server here (rbdcache reaches %s of that transport limit). On the same "
               "file origin rbdcache does %s of nbdkit's cache filter."
               % (meta["mem"], fmt_us(mean("local", "fio-direct", "rr1") or 0),
                  fmt_us(mean("lat0", "nbdkit-cache-rbd-warm", "rr1") or 0),
                  fmt_us((mean("lat0", "rbdcache-wb-warm", "rr1") or 0) - (mean("local", "fio-direct", "rr1") or 0)),
                  x(nf, fd), x(iops("lat0", "rbdcache-wb-warm", "rr32"), nf), x(rcf, ncf)))
if any(n.startswith("Writeback 4K randwrite QD32") for n in missed):
    g0, gf = iops("lat0", "rbdcache-wb-warm", "rw32"), iops("local", "rbdcache-file-wb-warm", "rw32")
    qf, ncf = iops("local", "qemu-nbd-file", "rw32"), iops("local", "nbdkit-cache-file-warm", "rw32")
    wb = stats_delta("lat0", "rbdcache-wb-warm", "rw32", "bytes_written_back")
    why.append("**Writeback random writes.** nbdkit's cache filter writes into its page-cache file and sends "
               "nothing to the origin until a FLUSH, which fio never sends: it measures memory writes. "
               "rbdcache writes each 4K to its cache device with O_DIRECT and, once 10 %% of the cache is "
               "dirty (`--dirty-high`), writes back to Ceph during the run (%s written back during the QD32 "
               "run), and the Ceph OSD runs on the same 2 CPUs. Without Ceph, on the file origin, rbdcache "
               "does %s IOPS: %s qemu-nbd --cache=none and %s nbdkit's cache filter on the same file; over "
               "RBD it does %s IOPS, %s of its file-origin rate."
               % ("%.0f MiB" % (wb / 2**20) if wb is not None else "-", fmt_iops(gf or 0), x(gf, qf), x(gf, ncf),
                  fmt_iops(g0 or 0), x(g0, gf)))
if any(n.startswith("Cold 4K randread") for n in missed):
    pt = mean("lat0", "rbdcache-pt", "cold1"); q = mean("lat0", "qemu-nbd-rbd", "cold1")
    lb = mean("lat0", "librbd", "cold1"); c = mean("lat0", "rbdcache-wb-cold", "cold1")
    r = load("lat0", "rbdcache-wb-cold", "cold1")
    prom = stats_delta("lat0", "rbdcache-wb-cold", "cold1", "promotions")
    mis = stats_delta("lat0", "rbdcache-wb-cold", "cold1", "read_misses")
    rp = load("lat0", "rbdcache-pt", "cold1")
    why.append("**Cold reads without injected latency.** A miss costs rbdcache in writeback mode %s us mean "
               "(p99 %s us) against %s us through qemu-nbd and %s us through librbd directly%s. "
               "The difference is promotion: the policy promoted %s of the %s misses (its hotspot regions are "
               "4 blocks, so two reads in one region in different epochs promote), and a promoting miss is "
               "answered only after its data has also been written to the cache device "
               "(`CacheEngine::fill_after_read()` calls `done` from the cache write's completion), which adds a "
               "device write to the reply and queues behind the once-a-second metadata commit's fdatasync, "
               "hence the tail. Answering as soon as the origin read lands and finishing the fill in the "
               "background (into a buffer the engine owns) would bring the miss close to passthrough. "
               "With the latency of a networked cluster this is hidden (the latency-injected goal passes)."
               % (fmt_us(c or 0), fmt_us(r["p99"]) if r else "-", fmt_us(q or 0), fmt_us(lb or 0),
                  "; rbdcache's passthrough mode, with the same NBD server and librbd path but no caching, "
                  "%s us (p99 %s us)" % (fmt_us(pt), fmt_us(rp["p99"])) if pt and rp else "",
                  prom if prom is not None else "-", mis if mis is not None else "-"))
if any(n.startswith("Flush throughput") for n in missed):
    why.append("**Writeback throughput.** `CacheEngine::write_back_unit()` flushes the origin "
               "(`rbd_aio_flush`) after every unit (up to 4 MiB of neighbouring blocks) before it marks the "
               "blocks clean; `wb_pump()` keeps at most 4 units in flight (1 while clients have requests in "
               "flight), and a batch is 256 blocks (16 MiB) that must drain completely before the next one "
               "starts. librbd's 1 MiB sequential write keeps 8 MiB in flight with no flush. What would close "
               "it: one origin flush per batch (group the units, mark them clean together), a window counted "
               "in bytes (for example 32 MiB) instead of 4 units, and starting the next batch while the "
               "previous one drains.")
profs = [p for w in ("rr32", "rw32") for p in [os.path.join(res, "profile-%s.txt" % w)] if os.path.exists(p)]
def share(names):
    out = []
    for p in profs:
        tot = 0.0
        for line in open(p):
            parts = line.split()
            if len(parts) >= 4 and parts[0].endswith("%") and parts[-1] in names or (len(parts) >= 4 and parts[3] in names):
                try:
                    tot += float(parts[0].rstrip("%"))
                except ValueError:
                    pass
        out.append("%.1f %% (%s)" % (tot, "reads" if "rr32" in p else "writes"))
    return " and ".join(out)
if profs:
    why.append("**Where rbdcache's CPU goes** (profiles below, self time): most samples are in the kernel. "
               "`iowrite16` is the virtio-blk doorbell, paid once per device I/O (fio's O_DIRECT run pays it "
               "too; the reactor already submits a loop's worth of requests with one `io_uring_submit_and_wait`). "
               "`finish_task_switch` is threads going to sleep and waking: the reactor threads, the commit and "
               "background threads and fio all share 2 CPUs, so every wait in `io_uring_submit_and_wait` is a "
               "context switch; busy-polling for a few microseconds before sleeping, or fewer threads than "
               "CPUs (`--threads 1`), would cut it. `malloc`/`free` take %s of the samples: each device I/O allocates "
               "an `Op` holding a `std::function` (`Reactor::submit_op`), and each NBD request a `Request` and "
               "`shared_ptr` callbacks; a per-reactor free list for both would remove them. "
               "`Mapping::lookup` under the engine's single mutex is %s." % (share(("malloc", "free", "_int_malloc", "_int_free", "cfree", "malloc_consolidate")), share(("rbdcache::cache::Mapping::lookup",))))
if why:
    P("### Why the misses")
    P("")
    for w_ in why:
        P(w_)
        P("")

# ---- whole-system
P("## Whole-system figures")
P("")
P("| figure | no injected latency | latency injected |")
P("|---|---|---|")
s0, s1 = system("lat0"), system(LAT)
def sv(s, f):
    return f(s) if s else "-"
P("| dirty data written back (flush test) | %s | %s |" % tuple(sv(s, lambda s: "%.0f MiB" % (s["dirty_bytes"] / 2**20)) for s in (s0, s1)))
P("| time until dirty_bytes = 0 (after the restart that forces writeback) | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["flush_s"]) for s in (s0, s1)))
P("| writeback throughput | %s | %s |" % tuple(sv(s, lambda s: "%.0f MB/s" % (s["dirty_bytes"] / s["flush_s"] / 1e6 if s["flush_s"] else 0)) for s in (s0, s1)))
lbs = [load(l, "librbd", "seqw") for l in ("lat0", LAT)]
P("| librbd 1 MiB sequential write QD8 (fio rbd engine) | %s | %s |" % tuple("%.0f MB/s" % x["bw"] if x else "-" for x in lbs))
P("| restart with a populated dirty cache, until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_dirty_s"]) for s in (s0, s1)))
P("| restart with a populated clean cache, until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_clean_s"]) for s in (s0, s1)))
P("| restart after kill -9 (warm cache), until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_kill9_s"]) for s in (s0, s1)))
P("| warm hit ratio before kill -9 / after | %s | %s |" % tuple(sv(s, lambda s: "%.1f %% / %.1f %%" % (100 * s["hit_before"], 100 * s["hit_after"])) for s in (s0, s1)))
P("")
P("Flush test: rbdcache in writeback mode with writeback held off (`--dirty-high 100 --max-dirty-age 86400 "
  "--sequential-cutoff 0`) takes %s of 1 MiB random writes, is stopped, and is restarted with "
  "`--dirty-high 0 --dirty-low 0`; the time runs from the socket answering to SIGUSR1 statistics showing "
  "`dirty_bytes` 0 (polled every 0.1 s). Hit ratio: random 64 KiB read passes over the %s working set until it is cached (as for the warm runs), "
  "then a 4K QD32 random read pass measured by the `read_hits`/`read_misses` deltas; 1.5 s later "
  "(past the 1 s metadata commit interval) `kill -9`, restart, and the same pass again."
  % (meta["flush"], meta["ws"]))
P("")

# ---- tables
P("## Results per workload")
P("")
P("IOPS; mean and p99 completion latency in microseconds (of the reads, or of the writes for write "
  "workloads); hit % from rbdcache's SIGUSR1 statistics over the run. `rbdcache ÷` is rbdcache's IOPS "
  "divided by the row's (above 1: rbdcache is faster); `lat ÷` is the row's mean latency divided by "
  "rbdcache's (above 1: rbdcache's latency is lower). The rbdcache reference is writeback, cold for the cold "
  "workloads and warm otherwise (the file-origin rbdcache in the file-origin tables).")
P("")
for w, title in WORKLOADS:
    rows_any = False
    block = ["### " + title, ""]
    for sec, stitle, targets in SECTIONS:
        ref = load(sec, ref_target(sec, w), w)
        rows = [(t, load(sec, t, w)) for t in targets]
        rows = [(t, r) for t, r in rows if r]
        if not rows:
            continue
        rows_any = True
        block.append("*%s*" % stitle)
        block.append("")
        block.append("| target | IOPS | MB/s | mean | p99 | hit % | rbdcache ÷ | lat ÷ |")
        block.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t, r in rows:
            rr = "%.2fx" % (ref["iops"] / r["iops"]) if ref and r["iops"] else "-"
            rl = "%.2fx" % (r["mean"] / ref["mean"]) if ref and ref["mean"] else "-"
            hit = "%.0f" % (100 * r["hit"]) if r["hit"] is not None else "-"
            name = "**%s**" % t if t == ref_target(sec, w) else t
            block.append("| %s | %s | %.1f | %s | %s | %s | %s | %s |"
                         % (name, fmt_iops(r["iops"]), r["bw"], fmt_us(r["mean"]), fmt_us(r["p99"]), hit, rr, rl))
        block.append("")
    if rows_any:
        L.extend(block)

warm_rows = []
for sec in ("lat0", LAT, "local"):
    for t in RBD_T + FILE_T:
        d = os.path.join(res, sec, t)
        if not t.endswith("-warm") or not os.path.exists(os.path.join(d, "warm.json")):
            continue
        passes = len([f for f in os.listdir(d) if f.startswith("warm") and f.endswith(".json")])
        first = ""
        sp = os.path.join(d, "warm.json.stats")
        if os.path.exists(sp):
            a = json.load(open(sp))["after"]
            ws_blocks = ws_b / a.get("block_size", 65536)
            first = "%.0f %%" % (100 * a.get("mapped_blocks", 0) / ws_blocks)
        warm_rows.append("| %s | %s | %d | %s |" % (sec, t, passes, first or "all (caches on first read)"))
if warm_rows:
    P("### Warm-up")
    P("")
    P("Passes of random 64 KiB reads over the working set before the warm runs, and the share of the "
      "working set cached after the first pass. rbdcache's policy (`src/cache/smq_policy.h`) promotes a "
      "block only after its region has been touched in two distinct epochs, so one pass alone leaves most "
      "of a fresh working set uncached; the script repeats the pass (up to 4) until it is mapped. The last "
      "column counts every cached block against the working set's size: on the RBD origin the cold runs "
      "before the warm-up (writes in writeback mode cache what they write) had already cached the working "
      "set, so one pass was enough there; the file-origin row shows a fresh cache.")
    P("")
    P("| origin | target | passes | cached blocks after pass 1, % of the working set |")
    P("|---|---|---:|---:|")
    for r in warm_rows:
        P(r)
    P("")

P("### Targets")
P("")
for t in RBD_T + FILE_T:
    P("- `%s`: %s" % (t, DESC[t]))
P("")
P("Warm means after one full pass of random 64 KiB reads over the working set (a sequential pass "
  "would bypass rbdcache's cache: streams over `--sequential-cutoff`, 4 MiB, go straight to the origin). "
  "Cold reads use 4K reads at 64 KiB-aligned random offsets over half the image each (QD1 the first half, "
  "QD32 the second) so that almost each is a miss of a 64 KiB cache block; the hit % column shows how "
  "many were not. Write workloads on rbdcache run in the order listed, so in writeback mode dirty data "
  "from earlier runs may be written back while later ones run, as it would in service.")
P("")

profiles = [(w, os.path.join(res, "profile-%s.txt" % w)) for w in ("rr32", "rw32")]
profiles = [(w, p) for w, p in profiles if os.path.exists(p) and os.path.getsize(p)]
if profiles:
    P("## Profiles")
    P("")
    P("`perf record -e cpu-clock -g` of the rbdcache process during the warm QD32 runs "
      "(RBD origin, no injected latency), symbols above 1.5 %, self time:")
    P("")
    for w, p in profiles:
        P("%s:" % ("4K randread QD32" if w == "rr32" else "4K randwrite QD32"))
        P("")
        P("```")
        P("\n".join(l.rstrip(" -") for l in open(p).read().rstrip().splitlines()))
        P("```")
        P("")

open(md_path, "w").write("\n".join(L) + "\n")

# ---- chart data
os.makedirs(chart, exist_ok=True)
CW = ["rr1", "rr32", "rw1", "rw32"]
def dat(name, sec, targets):
    with open(os.path.join(chart, name), "w") as f:
        f.write("workload " + " ".join(targets) + "\n")
        for w in CW:
            vals = []
            for t in targets:
                r = load(sec, t, w)
                vals.append("%.0f" % r["iops"] if r and r["iops"] > 0 else "-")
            f.write({"rr1": "read-QD1", "rr32": "read-QD32", "rw1": "write-QD1",
                     "rw32": "write-QD32"}[w] + " " + " ".join(vals) + "\n")
ct = ["rbdcache-wb-warm", "nbdkit-cache-rbd-warm", NOCACHE, "librbd"]
dat("lat0.dat", "lat0", ct)
dat("latn.dat", LAT, ct)
dat("local.dat", "local", FILE_T)
gp = """set terminal pngcairo size 1500,620 font ",10"
set output "chart.png"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set yrange [100:*]
set ylabel "IOPS (log scale)"
set key outside bottom center horizontal maxrows 2 font ",8"
set grid ytics
set xtics font ",8"
set multiplot layout 1,3 title "rbdcache and peers, fio 4K random I/O, %s s runs (load %s at start; noisy shared machine)"
set title "RBD origin, no injected latency"
plot for [i=2:%d] "lat0.dat" using i:xtic(1) title columnheader(i)
set title "RBD origin, latency injected (--latency %s)"
plot for [i=2:%d] "latn.dat" using i:xtic(1) title columnheader(i)
set title "file origin and limits"
plot for [i=2:%d] "local.dat" using i:xtic(1) title columnheader(i)
unset multiplot
""" % (meta["runtime"], meta["load_start"], len(ct) + 1, meta["latency_ms"], len(ct) + 1, len(FILE_T) + 1)
open(os.path.join(chart, "chart.gp"), "w").write(gp)
