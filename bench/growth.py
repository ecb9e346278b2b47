"""Costs as the campaign grows (issue 16 item 4): the sign, petition-page and stats rates of one server process
at 0, 1 M and (with BENCH_FULL=1) 10 M stored signatures, each as a ratio of its rate at 0, on SQLite and on
PostgreSQL (a database of its own on 127.0.0.1:5432, dropped afterwards). The signatures are made by `campaign
demo-data` (its rows/s reported for each step); every step runs a fresh server on the grown database, so the
figures include whatever its start-up and caches cost at that size.

Also: each process's RSS (the server and its sign-writer process) when it has started and after the load, the
database's size per million signatures, and at the largest step the CSV export (`campaign export`) and the mbox
letters (`campaign letters --format mbox`) with rows/s and peak memory.

The ping route is measured in every step too: the machine is shared and its speed moves by up to 20 % between
runs, so each ratio is also given normalised by ping's own ratio (rate/ping at N over rate/ping at 0).

    python -m bench.growth          BENCH_FULL=1 (adds the 10 M step: about 25 more minutes here)
                                    BENCH_GROWTH_STEPS=0,1000000 (overrides)  BENCH_GROWTH_SECONDS=5 (per run)
                                    BENCH_GROWTH_SQLITE_ONLY=1  BENCH_GROWTH_EXTRAS=0 (no export/letters)
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from app.models import Signature
from bench import harness
from bench.exports import export
from bench.harness import Load, Report
from bench.letters import run_cli as letters_cli

SLUG = "mamay"
FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
STEPS = [int(s) for s in os.environ.get("BENCH_GROWTH_STEPS", "0,1000000,10000000" if FULL else "0,1000000")
         .split(",")]
SECONDS = int(os.environ.get("BENCH_GROWTH_SECONDS", "5"))
EXTRAS = os.environ.get("BENCH_GROWTH_EXTRAS", "1") != "0"
KINDS = {  # name -> (path, wrk script, its args)
    "ping": ("/api/v1/ping", "get.lua", []),
    "sign": (f"/api/v1/campaigns/{SLUG}/signatures", "sign.lua", [SLUG]),
    "page": (f"/c/{SLUG}?lang=ru", "get.lua", []),
    "stats": (f"/api/v1/campaigns/{SLUG}/stats", "get.lua", []),
}


def rows_in(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Signature)) or 0
    finally:
        engine.dispose()


def size_mb(url: str, var_dir: Path) -> float:
    """The database on disk: SQLite's file and its WAL; PostgreSQL's pg_database_size."""
    if url.startswith("sqlite"):
        engine = create_engine(url)  # the server has stopped: fold the WAL into the file first
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        return sum(p.stat().st_size for p in var_dir.glob("campaign.db*")) / 2**20
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT pg_database_size(current_database())")) / 2**20
    finally:
        engine.dispose()


def fill(env: dict[str, str], count: int) -> dict:
    """`campaign demo-data` of `count` more signers; its own rows/s (inside the command) and the wall time."""
    started = time.perf_counter()
    done = harness.campaign_cli("demo-data", SLUG, "--count", str(count), env=env, timeout=7200)
    wall = time.perf_counter() - started
    found = re.search(r"\(([\d,]+)\s+rows/s", done.stdout + done.stderr)
    inside = float(found.group(1).replace(",", "")) if found else count / wall
    return {"rows": count, "wall_s": round(wall, 1), "rows_per_s": round(inside),
            "wall_rows_per_s": round(count / wall)}


def roles(srv: harness.Server) -> dict[str, float]:
    """RSS (MB) of each process of the server, by role."""
    return {role: round(harness.rss_mb(pid), 1) for role, pid in harness.server_roles(srv).items()}


def measure(env: dict[str, str], var_dir: Path, label: str, rows: int) -> dict:
    """One server on the database as it is: each kind's best closed-loop rate of two rounds, RSS around them."""
    run = uuid.uuid4().hex[:6]
    runs: dict[str, list[Load]] = {k: [] for k in KINDS}
    with harness.server(env, log_dir=var_dir) as srv:
        rss_before = roles(srv)
        for path, script, args in KINDS.values():  # warm up: imports, caches, the page renders
            harness.wrk(srv.base + path, script=script, args=[*args, f"{run}-w"] if args else None, seconds=2)
        for round_ in range(2):  # in turns, so a neighbour's burst falls on every kind alike
            for kind, (path, script, args) in KINDS.items():
                load = harness.wrk(srv.base + path, script=script, seconds=SECONDS,
                                   args=[*args, f"{run}-{round_}"] if args else None)
                runs[kind].append(load)
                print(f"  [{label} at {rows:,}] {kind:5s} {load.line()}", flush=True)
        rss_after, peak = roles(srv), srv.peak_rss_mb()
    best = {k: max(v, key=lambda r: r.rps) for k, v in runs.items()}
    errors = sum(r.bad + r.errors for v in runs.values() for r in v)
    return {"rows": rows, "rps": {k: round(b.rps, 1) for k, b in best.items()},
            "p99_ms": {k: b.p99_ms for k, b in best.items()}, "errors": errors,
            "rss_mb_started": rss_before, "rss_mb_after_load": rss_after, "peak_rss_mb": round(peak, 1),
            "runs": {k: [vars(r) for r in v] for k, v in runs.items()}}


def extras(env: dict[str, str], var_dir: Path, label: str, rows: int) -> dict:
    """The CSV export and the mbox letters of everything stored: rows/s and peak memory."""
    out = var_dir / "out"
    out.mkdir(exist_ok=True)
    done = export(env, out / "all.csv")
    with (out / "all.csv").open("rb") as fh:
        exported = sum(1 for _ in fh) - 1
    (out / "all.csv").unlink()
    took, cpu, rss, pss = letters_cli(env, "--format", "mbox", "-o", str(out / "all.mbox"), "--target", "president")
    with (out / "all.mbox").open("rb") as fh:
        letters = sum(1 for line in fh if line.startswith(b"From MAILER-DAEMON "))
    shutil.rmtree(out, ignore_errors=True)
    found = {
        "export_csv": {"rows": exported, "seconds": round(done.seconds, 1),
                       "rows_per_s": round(exported / done.seconds), "peak_rss_mb": round(done.peak_mb, 1),
                       "all_processes_peak_pss_mb": round(done.tree_peak_mb, 1), "processes": done.processes},
        "letters_mbox": {"letters": letters, "seconds": round(took, 1), "letters_per_s": round(letters / took),
                         "cpu_seconds": round(cpu, 1), "all_processes_peak_rss_mb": round(rss, 1),
                         "all_processes_peak_pss_mb": round(pss, 1)},
    }
    e, m = found["export_csv"], found["letters_mbox"]
    print(f"  [{label} at {rows:,}] export: {e['rows']:,} rows in {e['seconds']} s = {e['rows_per_s']:,} rows/s, "
          f"peak RSS {e['peak_rss_mb']} MB (all processes PSS {e['all_processes_peak_pss_mb']} MB)\n"
          f"  [{label} at {rows:,}] letters mbox: {m['letters']:,} in {m['seconds']} s = {m['letters_per_s']:,}/s, "
          f"peak RSS {m['all_processes_peak_rss_mb']} MB all processes (PSS {m['all_processes_peak_pss_mb']})",
          flush=True)
    return found


def backend(report: Report, label: str, database_url: str, var_dir: Path) -> dict:
    env = harness.app_env(var_dir, database_url)
    url = database_url or f"sqlite:///{var_dir / 'campaign.db'}"
    harness.campaign_cli("db", "upgrade", env=env)
    steps, fills, made = [], [], 0
    for target in STEPS:  # demo-data signatures; the rows the earlier steps' sign runs added come on top
        if target > made:
            fills.append({"from": rows_in(url), **fill(env, target - made)})
            made = target
            print(f"  [{label}] demo-data: {fills[-1]['rows']:,} rows at {fills[-1]['rows_per_s']:,} rows/s "
                  f"(inside the command; {fills[-1]['wall_rows_per_s']:,} rows/s wall)", flush=True)
        have = rows_in(url)
        step = measure(env, var_dir, label, have)
        step["size_mb"] = round(size_mb(url, var_dir), 1)
        step["rows_after_load"] = rows_in(url)
        steps.append(step)
        print(f"  [{label} at {have:,}] database {step['size_mb']:,} MB; RSS started {step['rss_mb_started']}, "
              f"after load {step['rss_mb_after_load']}", flush=True)
    base = steps[0]
    for step in steps[1:]:
        n = f"{step['rows'] / 1e6:.2g} M" if step["rows"] >= 100_000 else f"{step['rows']:,}"
        ping_ratio = step["rps"]["ping"] / base["rps"]["ping"]
        for kind in ("sign", "page", "stats"):
            fig = report.figure(f"{label}: {kind} req/s at {n} signatures", step["rps"][kind], "req/s",
                          base["rps"][kind], f"{kind} at {base['rows']:,}", goal=0.8,
                          notes={"normalised_by_ping": round(step["rps"][kind] / base["rps"][kind] / ping_ratio, 3),
                                 "ping_ratio": round(ping_ratio, 3), "p99_ms": step["p99_ms"][kind]})
            print(f"    normalised by ping's own ratio ({ping_ratio:.2f}x): {fig.notes['normalised_by_ping']:.2f}x",
                  flush=True)
        # Both sizes are taken after their step's load, so with the rows counted then.
        grown = (step["size_mb"] - base["size_mb"]) / max(step["rows_after_load"] - base["rows_after_load"], 1) * 1e6
        step["mb_per_million"] = round(grown, 1)
        report.check(f"{label}: database size per million signatures (0 -> {n})", f"{grown:,.0f} MB", "reported",
                     True)
    errors = sum(s["errors"] for s in steps)
    report.check(f"{label}: errors in every step", errors, "0", errors == 0)
    found = {"steps": steps, "fills": fills}
    if EXTRAS and steps[-1]["rows"]:
        found["at_largest"] = extras(env, var_dir, label, steps[-1]["rows"])
    return found


def main() -> Report:
    harness.header(f"costs as the campaign grows: {', '.join(f'{s:,}' for s in STEPS)} signatures"
                   + ("" if FULL else " (BENCH_FULL=1 adds 10 M)"))
    report = Report("growth")
    report.details.update(steps=STEPS, seconds_per_run=SECONDS, full=FULL)
    with harness.var_dir("growth-sqlite") as var_dir:
        report.details["sqlite"] = backend(report, "SQLite", "", var_dir)
    if os.environ.get("BENCH_GROWTH_SQLITE_ONLY"):
        report.details["postgresql"] = "skipped: BENCH_GROWTH_SQLITE_ONLY is set"
    else:
        with harness.postgres_database("growth") as pg_url, harness.var_dir("growth-pg") as var_dir:
            if pg_url is None:
                print("  PostgreSQL not reachable on 127.0.0.1:5432: skipped", flush=True)
                report.details["postgresql"] = "skipped: no server on 127.0.0.1:5432"
            else:
                report.details["postgresql"] = backend(report, "PostgreSQL", pg_url, var_dir)
    report.write()
    return report


if __name__ == "__main__":
    main()
