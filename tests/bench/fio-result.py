"""One fio run's JSON (stdin) as one line of the benchmark's results:

    ROUND WORKLOAD SERVER IOPS KiB/s LAT-P50-us LAT-P99-us CPU-us/request

usage: fio-result.py ROUND WORKLOAD SERVER CPU_TICKS CLK_TCK
CPU_TICKS is the server's user + system time over the run ("-": not
measured); divided by every request fio completed, it is the server's CPU
time per request.
"""
import json
import sys

rnd, workload, server, ticks, hz = sys.argv[1:6]
text = sys.stdin.read()  # the nbd engine prints a line before the JSON
job = json.loads(text[text.index("{"):])["jobs"][0]
if job["error"]:
    print(f"bench: {workload} on {server}: fio error {job['error']}", file=sys.stderr)
side = job["read"] if job["read"]["io_bytes"] else job["write"]
# Total latency (submission + completion): io_uring does a cached read
# while submitting it, so completion latency alone would miss it.
pct = side["lat_ns"].get("percentile", {})
p50 = pct.get("50.000000", 0) / 1000
p99 = pct.get("99.000000", 0) / 1000
ios = job["read"]["total_ios"] + job["write"]["total_ios"]
cpu = "-" if ticks == "-" or not ios else f"{int(ticks) / int(hz) * 1e6 / ios:.2f}"
print(rnd, workload, server, f"{side['iops']:.0f}", side["bw"], f"{p50:.1f}",
      f"{p99:.1f}", cpu, sep="\t")
