#!/usr/bin/env python3
"""Windlass's workflow layer against DBOS Transact for Rust, back to back in one run.

The peer (../shared/peer-bench/rust/dbos-bench, crate `dbos`) runs the "Workflows" workloads
of ../shared/peer-bench/README.md (WF1 direct starts with C in flight, WF2 the same queued and
run by workers, WF3 start-to-first-step latency); `windlass bench flow` runs the same
workloads on Windlass. Each repeat runs the peer's three workloads and then Windlass's on
PostgreSQL (and Windlass's on SQLite), so both see the same machine state. The table gives
medians, the spread (half the min-max range as a share of the median) and, per repeat, the
ratio Windlass / DBOS (min-max).

    python3 crates/windlass-bench/flow_vs_dbos.py [--repeats 3] [--no-peer]
        [--database-url postgres://postgres@127.0.0.1:5432/test] [--json out.json]

Builds the peer (into /var/tmp/peer-bench/target, as ../shared/peer-bench/build.sh does) and
`windlass` (release) if needed; the peer uses the database `bench` (created if missing).
DBOS's WF2 runs with N = 500, as run_all.py does: its queue polls once a second.

Each of the peer's workloads starts from a schema it has just created (its schema `dbos_rs`
is dropped first). The peer's own reset (TRUNCATE, then VACUUM ANALYZE of the empty tables)
halves its WF1 (measured 2026-11-24: 848 workflows/s on a new schema, 366-428 after a
reset): its statements' cached plans are then made for tables the statistics call empty.
A new schema gives it its best case, which is the one to compare against.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEER_SRC = ROOT.parent / "shared" / "peer-bench" / "rust" / "dbos-bench"
PEER_TARGET = Path(os.environ.get("PEERBENCH_STATE", "/var/tmp/peer-bench")) / "target"
PEER_BIN = PEER_TARGET / "release" / "dbos-bench"
WINDLASS_BIN = ROOT / "target" / "release" / "windlass"


def build(peer):
    if peer and not PEER_BIN.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--locked"], cwd=PEER_SRC,
                       check=True, env={**os.environ, "CARGO_TARGET_DIR": str(PEER_TARGET)})
    subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "-p", "windlass-cli"],
                   cwd=ROOT, check=True)


def peer_url(url):
    base = url.rsplit("/", 1)[0]
    subprocess.run(["psql", f"{base}/postgres", "-qc", "CREATE DATABASE bench"],
                   capture_output=True)
    return f"{base}/bench"


def dbos(workload, url):
    subprocess.run(["psql", url, "-qc", "DROP SCHEMA IF EXISTS dbos_rs CASCADE"],
                   capture_output=True, check=True)
    n = "500" if workload == "wf2" else "5000"
    cmd = [str(PEER_BIN), workload, "--n", n, "--c", "16", "--lat-n", "200", "--lat-gap-ms", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, "PG_URL": url}).stdout
    line = next(l for l in reversed(out.splitlines()) if l.startswith("{"))
    return json.loads(line)


def windlass(backend, url, tmp):
    cmd = [str(WINDLASS_BIN), "bench", "flow", "--backend", backend, "--json",
           "--dir", str(tmp)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, "DATABASE_URL": url}).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(xs):
    m = statistics.median(xs)
    return 0.0 if m == 0 else (max(xs) - min(xs)) / 2 / m * 100


def rate(r, wl):
    """Workflows/s from either side's report."""
    x = r[wl] if wl in r else r
    for k in ("workflows_per_s", "jobs_per_s", "per_s"):
        if isinstance(x, dict) and k in x:
            return x[k]
    raise KeyError(f"no rate in {x}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="Windlass only")
    ap.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--json")
    a = ap.parse_args()
    build(not a.no_peer)
    tmp = Path("/var/tmp/windlass-flow-bench")
    tmp.mkdir(parents=True, exist_ok=True)
    runs = {"dbos": [], "postgres": [], "sqlite": []}
    for r in range(a.repeats):
        if not a.no_peer:
            url = peer_url(a.database_url)
            runs["dbos"].append({w: dbos(w, url) for w in ("wf1", "wf2", "wf3")})
        runs["postgres"].append(windlass("postgres", a.database_url, tmp))
        runs["sqlite"].append(windlass("sqlite", a.database_url, tmp))
        print(f"repeat {r + 1}/{a.repeats} done", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=1))

    def med(xs, fmt):
        return f"{fmt(statistics.median(xs))} (±{spread(xs):.0f}%)"

    print("| workload | DBOS Rust (PostgreSQL) | Windlass PostgreSQL | Windlass / DBOS | Windlass SQLite |")
    print("|---|---|---|---|---|")
    for wl in ("wf1", "wf2"):
        pg = [rate(x, wl) for x in runs["postgres"]]
        sq = [rate(x, wl) for x in runs["sqlite"]]
        if runs["dbos"]:
            db = [rate(x[wl], wl) for x in runs["dbos"]]
            ratios = [p / d for p, d in zip(pg, db)]
            peer = med(db, lambda v: f"{v:,.0f}")
            ratio = f"{statistics.median(ratios):.1f}x ({min(ratios):.1f}–{max(ratios):.1f})"
        else:
            peer, ratio = "—", "—"
        print(f"| {wl.upper()} workflows/s | {peer} | {med(pg, lambda v: f'{v:,.0f}')} | {ratio} "
              f"| {med(sq, lambda v: f'{v:,.0f}')} |")
    for q in ("p50_ms", "p99_ms"):
        pg = [x["wf3"][q] for x in runs["postgres"]]
        sq = [x["wf3"][q] for x in runs["sqlite"]]
        peer = "—"
        if runs["dbos"]:
            db = [x["wf3"].get(q, x["wf3"].get("wf3", {}).get(q)) for x in runs["dbos"]]
            peer = f"{statistics.median(db):.2f} ({min(db):.2f}–{max(db):.2f})"
        print(f"| WF3 {q.replace('_ms', '')} ms | {peer} | {statistics.median(pg):.2f} "
              f"({min(pg):.2f}–{max(pg):.2f}) | — | {statistics.median(sq):.2f} "
              f"({min(sq):.2f}–{max(sq):.2f}) |")
    wf2_over_wf1 = [rate(x, "wf2") / rate(x, "wf1") for x in runs["postgres"]]
    print(f"\nPostgreSQL WF2 / WF1 per repeat: median {statistics.median(wf2_over_wf1):.2f} "
          f"({min(wf2_over_wf1):.2f}–{max(wf2_over_wf1):.2f})")


if __name__ == "__main__":
    main()
