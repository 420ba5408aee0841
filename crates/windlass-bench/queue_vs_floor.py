#!/usr/bin/env python3
"""Windlass's job queue against the raw-SQL floor, back to back in one run.

The floor (../shared/peer-bench/rust/raw-floor) is the least SQL a durable queue needs per
job; `windlass bench queue` runs the same workloads (W1-W4 of ../shared/peer-bench/README.md)
on Windlass. Each repeat runs the floor's four workloads and then Windlass's, per backend, so
both see the same machine state; the table gives medians, the spread (half the min-max range
as a share of the median) and the ratio Windlass / floor per repeat (min-max).

    python3 crates/windlass-bench/queue_vs_floor.py [--repeats 3] [--backends sqlite,postgres]
        [--database-url postgres://postgres@127.0.0.1:5432/test] [--json out.json]

Builds the floor (into /var/tmp/windlass-floor) and `windlass` (release) if needed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR_SRC = ROOT.parent / "shared" / "peer-bench" / "rust" / "raw-floor"
FLOOR_TARGET = Path("/var/tmp/windlass-floor")
FLOOR_BIN = FLOOR_TARGET / "release" / "raw-floor"
WINDLASS_BIN = ROOT / "target" / "release" / "windlass"


def build():
    if not FLOOR_BIN.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=FLOOR_SRC, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(FLOOR_TARGET)})
    subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "-p", "windlass-cli"],
                   cwd=ROOT, check=True)


def floor(backend, workload, url, tmp):
    db = url_to_floor_dsn(url) if backend == "postgres" else str(tmp / "floor.sqlite")
    out = subprocess.run([str(FLOOR_BIN), backend, workload, "--db", db], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def url_to_floor_dsn(url):
    # postgres://user@host:port/db -> key=value form, which the floor takes
    rest = url.split("://", 1)[1]
    user, hostdb = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    hostport, db = hostdb.split("/", 1)
    host, port = hostport.split(":") if ":" in hostport else (hostport, "5432")
    return f"host={host} port={port} user={user} dbname={db}"


def windlass(backend, url, tmp):
    cmd = [str(WINDLASS_BIN), "bench", "queue", "--backend", backend, "--json",
           "--dir", str(tmp / "windlass")]
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(xs):
    m = statistics.median(xs)
    return 0.0 if m == 0 else (max(xs) - min(xs)) / 2 / m * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--json")
    a = ap.parse_args()
    build()
    tmp = Path("/var/tmp/windlass-queue-bench")
    tmp.mkdir(parents=True, exist_ok=True)
    runs = {b: {"floor": [], "windlass": []} for b in a.backends.split(",")}
    for r in range(a.repeats):
        for b in runs:
            f = {w: floor(b, w, a.database_url, tmp) for w in ("w1", "w2", "w3", "w4")}
            runs[b]["floor"].append(f)
            runs[b]["windlass"].append(windlass(b, a.database_url, tmp))
            print(f"repeat {r + 1}/{a.repeats} {b} done", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))
    print("| backend | workload | raw floor | Windlass | Windlass / floor |")
    print("|---|---|---|---|---|")
    for b, rr in runs.items():
        for w in ("w1", "w2", "w3"):
            fl = [x[w]["jobs_per_s"] for x in rr["floor"]]
            wl = [x[w]["jobs_per_s"] for x in rr["windlass"]]
            ratios = [x / y for x, y in zip(wl, fl)]
            print(f"| {b} | {w.upper()} jobs/s | {statistics.median(fl):,.0f} (±{spread(fl):.0f}%) "
                  f"| {statistics.median(wl):,.0f} (±{spread(wl):.0f}%) "
                  f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
        for q in ("p50_ms", "p99_ms"):
            fl = [x["w4"][q] for x in rr["floor"]]
            wl = [x["w4"][q] for x in rr["windlass"]]
            ratios = [x / y for x, y in zip(wl, fl)]
            print(f"| {b} | W4 {q.replace('_ms', '')} ms | {statistics.median(fl):.2f} "
                  f"({min(fl):.2f}–{max(fl):.2f}) | {statistics.median(wl):.2f} "
                  f"({min(wl):.2f}–{max(wl):.2f}) | {statistics.median(ratios):.2f} "
                  f"({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
