"""The benchmarks' report: medians over the rounds of every workload and
server, and how the first server named compares with each of the others.

usage: report.py RESULTS [--memory=TSV] [--chart=PNG] SERVER...

RESULTS holds fio-result.py's lines; --memory, lines of
"SERVER KiB-per-idle-connection" (idle-conns.py); --chart writes a PNG
(gnuplot, chart.gp) of the first server's advantage over each other one:
throughput ratios, and for the iodepth-1 workloads (named qd1-*) the
inverse ratio of median latencies, so that above 1 always means faster.
"""
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

args = [a for a in sys.argv[1:] if not a.startswith("--")]
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
path, servers = args[0], args[1:]
first, peers = servers[0], servers[1:]

runs = defaultdict(list)    # (workload, server) -> [(iops, KiB/s, p50, p99, cpu)]
for line in open(path):
    r, w, s, *vals = line.rstrip("\n").split("\t")
    runs[w, s].append([None if v == "-" else float(v) for v in vals])
workloads = list(dict.fromkeys(w for w, _ in runs))


def median(w, s, col):
    vals = [v[col] for v in runs.get((w, s), []) if v[col] is not None]
    return statistics.median(vals) if vals else None


def is_latency(w):
    return w.startswith("qd1-")


def throughput(w, s):
    """IOPS for small blocks, MiB/s for 1M ones."""
    if w.endswith("1M"):
        m = median(w, s, 1)
        return m / 1024 if m is not None else None
    return median(w, s, 0)


def ratio(a, b):
    return a / b if a is not None and b else None


def cell(v, fmt="{:.0f}", suffix=""):
    return "-" if v is None else fmt.format(v) + suffix


def table(title, rows, heads, note=None):
    print(f"\n{title}")
    if note:
        print(note)
    print(f"{'workload':<22}" + "".join(f"{h:>{max(len(h) + 2, 11)}}" for h in heads))
    for name, cells in rows:
        print(f"{name:<22}" + "".join(
            c.rjust(max(len(h) + 2, 11)) for c, h in zip(cells, heads)))


n_rounds = max((len(v) for v in runs.values()), default=0)
ratio_heads = [f"{first}/{p}" for p in peers]

rows = []
for w in workloads:
    if is_latency(w):
        continue
    med = {s: throughput(w, s) for s in servers}
    unit = "MiB/s" if w.endswith("1M") else "IOPS"
    rows.append((f"{w} {unit}", [cell(med[s]) for s in servers] +
                 [cell(ratio(med[first], med[p]), "{:.2f}", "x") for p in peers]))
table(f"Throughput: medians of {n_rounds} rounds", rows, servers + ratio_heads)

rows = []
for w in filter(is_latency, workloads):
    p50 = {s: median(w, s, 2) for s in servers}
    p99 = {s: median(w, s, 3) for s in servers}
    rows.append((w, [cell(p50[s], "{:.1f}") + " / " + cell(p99[s])
                     for s in servers] +
                 [cell(ratio(p50[first], p50[p]), "{:.2f}", "x") for p in peers]))
if rows:
    table("Latency at iodepth 1 (submission to completion), us: median / p99", rows,
          [s + " p50 / p99" for s in servers] + ratio_heads,
          "(ratios of the medians: below 1 means faster)")

rows = []
for w in workloads:
    cpu = {s: median(w, s, 4) for s in servers}
    if any(v is not None for v in cpu.values()):
        rows.append((w, [cell(cpu[s], "{:.2f}") for s in servers] +
                     [cell(ratio(cpu[first], cpu[p]), "{:.2f}", "x") for p in peers]))
if rows:
    table("Server CPU time per request, us (user + system, all threads)", rows,
          servers + ratio_heads, "(below 1 means cheaper)")

if "memory" in opts and os.path.exists(opts["memory"]):
    mem = defaultdict(list)
    for line in open(opts["memory"]):
        s, kib = line.split()
        mem[s].append(float(kib))
    med = {s: statistics.median(mem[s]) if mem[s] else None for s in servers}
    table("Server memory per idle connection, KiB of RSS",
          [("idle-conns", [cell(med[s], "{:.1f}") for s in servers] +
            [cell(ratio(med[first], med[p]), "{:.2f}", "x") for p in peers])],
          servers + ratio_heads)

if "chart" in opts:
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as dat:
        print("workload", *(f'"vs {p}"' for p in peers), file=dat)
        for w in workloads:
            if is_latency(w):
                adv = [ratio(median(w, p, 2), median(w, first, 2)) for p in peers]
            else:
                adv = [ratio(throughput(w, first), throughput(w, p)) for p in peers]
            print(w, *("-" if a is None else f"{a:.3f}" for a in adv), file=dat)
    chart = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chart.gp")
    subprocess.run(["gnuplot", "-e", f"data='{dat.name}'; out='{opts['chart']}'; "
                    f"first='{first}'; ncols={len(peers)}", chart], check=True)
    os.unlink(dat.name)
    print(f"\nchart: {opts['chart']}")
