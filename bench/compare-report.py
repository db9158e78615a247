#!/usr/bin/env python3
"""Prints the table of scripts/bench-compare.sh.

    compare-report.py WORK ROUNDS OLD_BIN NEW_BIN LOAD_START LOAD_END

WORK holds one bench-peers.sh results directory per run, named old-R and
new-R for round R (local/TARGET/WORKLOAD.json, fio JSON).  For each
workload it prints rbdcache's IOPS and mean latency with the old and the
new binary (the median over the rounds), the ratio new / old, the same
ratio for nbdkit's cache filter on the same file and the device limit
(which did not change between the runs: their drift is the noise), and
the spread of the ratio over the rounds.
"""
import json
import os
import statistics
import sys

work, rounds, old_bin, new_bin, load_start, load_end = sys.argv[1:7]
rounds = int(rounds)
WORKLOADS = [("rr1", "4K randread QD1, warm"), ("rr32", "4K randread QD32, warm"),
             ("rw1", "4K randwrite QD1"), ("rw32", "4K randwrite QD32"),
             ("mix", "70/30 randrw zipf QD32"), ("seqw", "1 MiB seq write QD8"),
             ("mc4", "4K randread 4 x QD8")]


def load(which, r, target, w):
    p = os.path.join(work, "%s-%d" % (which, r), "local", target, w + ".json")
    if not os.path.exists(p):
        return None
    job = json.load(open(p))["jobs"][0]
    rd, wr = job["read"], job["write"]
    side = wr if w.startswith("rw") or w == "seqw" else rd
    return {"iops": rd["iops"] + wr["iops"], "mean": side["lat_ns"]["mean"] / 1000.0}


def ratios(target, w, key="iops"):
    out = []
    for r in range(1, rounds + 1):
        a, b = load("old", r, target, w), load("new", r, target, w)
        if a and b and a[key]:
            out.append(b[key] / a[key])
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def fx(x):
    return "%.2fx" % x if x is not None else "-"


def fiops(x):
    if x is None:
        return "-"
    return "%.1fk" % (x / 1000) if x >= 1000 else "%.0f" % x


print("# rbdcache: new build against old, file origin")
print()
print("- old: `%s`" % old_bin)
print("- new: `%s`" % new_bin)
print("- %d rounds, interleaved (old, new, then new, old, ...); load average %s at the start, %s at the end"
      % (rounds, load_start, load_end))
print()
print("| workload | old IOPS | new IOPS | new / old IOPS (min-max) | old mean us | new mean us "
      "| new / old mean latency | nbdkit cache new-run / old-run | device new-run / old-run (noise) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
T = "rbdcache-file-wb-warm"
for w, title in WORKLOADS:
    runs = {which: [load(which, r, T, w) for r in range(1, rounds + 1)] for which in ("old", "new")}
    if not any(runs["old"]) and not any(runs["new"]):
        continue
    iops = {k: med([x["iops"] for x in v if x]) for k, v in runs.items()}
    mean = {k: med([x["mean"] for x in v if x]) for k, v in runs.items()}
    ri = ratios(T, w)
    spread = " (%.2f-%.2f)" % (min(ri), max(ri)) if len(ri) > 1 else ""
    print("| %s | %s | %s | **%s**%s | %s | %s | %s | %s | %s |"
          % (title, fiops(iops["old"]), fiops(iops["new"]), fx(med(ri)), spread,
             "%.0f" % mean["old"] if mean["old"] else "-", "%.0f" % mean["new"] if mean["new"] else "-",
             fx(med(ratios(T, w, "mean"))), fx(med(ratios("nbdkit-cache-file-warm", w))),
             fx(med(ratios("fio-direct", w)))))
print()
print("Above 1.00x the new build does more IOPS; a latency ratio below 1.00x means lower latency. "
      "nbdkit and the device ran the same way in both runs: how far their ratios stray from 1.00x is "
      "how much the machine changed between the runs.")
