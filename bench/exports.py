"""Exports: `campaign export SLUG --format csv --status all` of 1,000,000 signatures (made by `campaign
demo-data`), as shipped (a real CLI process, every field opened on the fly, formula-safe cells, the export log),
against the floor measured in the same run on the same file: a bare loop of sqlite3 SELECT + AES-GCM open of the
same fields + csv.writer, in this process.

Goals (issue 6): streamed at constant memory (RSS growth < 50 MB between 100 k and 1 M rows) and >= 200 k rows/s.

    python -m bench.exports         BENCH_EXPORT_ROWS=1000000
"""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from app.encryption import Keyring
from bench import harness
from bench.harness import Report

SLUG = "mamay"
ROWS = int(os.environ.get("BENCH_EXPORT_ROWS", "1000000"))


def export(env: dict[str, str], out: Path, *, since: str | None = None) -> tuple[float, float, float]:
    """Run the export CLI; returns (seconds, peak RSS MB, RSS MB when the first rows were written)."""
    cmd = [str(harness.BIN / "python"), "-m", "app.cli", "export", SLUG, "--format", "csv", "--status", "all",
           "--output", str(out)]
    if since:
        cmd += ["--since", since]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=harness.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = first = 0.0
    deadline = time.monotonic() + 1200
    while process.poll() is None and time.monotonic() < deadline:
        rss = harness.rss_mb(process.pid)
        peak = max(peak, rss)
        if not first and out.exists() and out.stat().st_size > 0:
            first = rss
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"campaign export failed: {err.decode()[-2000:]}")
    return time.perf_counter() - started, peak, first


def bare_loop(db_path: Path, out: Path, keyring: Keyring) -> tuple[float, int]:
    """The floor: one SELECT, the same four fields opened, csv.writer to a file."""
    started = time.perf_counter()
    conn = sqlite3.connect(db_path)
    n = 0
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "email", "city", "country", "language", "status", "created_at",
                         "confirmed_at", "message"])
        cursor = conn.execute(
            "SELECT id, key_id, name_enc, email_enc, city_enc, message_enc, country, language, status, created_at,"
            " confirmed_at FROM signatures WHERE campaign = ? ORDER BY id", (SLUG,)
        )
        opener = keyring.open
        for sid, key_id, name, email, city, message, country, lang, status, created, confirmed in cursor:
            writer.writerow([sid, opener(name, "name", key_id), opener(email, "email", key_id),
                             opener(city, "city", key_id) or "", country, lang, status, created, confirmed,
                             opener(message, "message", key_id) or ""])
            n += 1
    conn.close()
    return time.perf_counter() - started, n


def main() -> Report:
    harness.header(f"CSV export of {ROWS:,} signatures vs a bare select+open+csv loop")
    report = Report("exports")
    with harness.var_dir("exports") as var_dir:
        env = harness.app_env(var_dir)
        db_path = var_dir / "campaign.db"
        harness.campaign_cli("db", "upgrade", env=env)
        small = max(ROWS // 10, 1)
        harness.campaign_cli("demo-data", SLUG, "--count", str(small), env=env, timeout=1800)
        small_s, small_peak, _ = export(env, var_dir / "small.csv")
        harness.campaign_cli("demo-data", SLUG, "--count", str(ROWS - small), env=env, timeout=1800)
        seconds, peak, first = export(env, var_dir / "all.csv")
        with (var_dir / "all.csv").open("rb") as fh:
            lines = sum(1 for _ in fh)
        floor_s, floor_rows = bare_loop(db_path, var_dir / "bare.csv", Keyring.parse(harness.BENCH_DATA_KEY))
        print(f"  export of {small:,}: {small_s:.1f} s, peak RSS {small_peak:.0f} MB", flush=True)
        print(f"  export of {ROWS:,}: {seconds:.1f} s, peak RSS {peak:.0f} MB (RSS {first:.0f} MB at the first rows)"
              f", {lines - 1:,} data lines (a message may span lines)", flush=True)
        print(f"  bare loop: {floor_rows:,} rows in {floor_s:.1f} s", flush=True)
        report.figure("CSV export rows/s (CLI process, start-up included)", ROWS / seconds, "rows/s",
                      floor_rows / floor_s, "bare select + open + csv.writer loop",
                      notes={"goal_rows_per_s": 200_000})
        report.check("CSV export rows/s", f"{ROWS / seconds:,.0f} rows/s", ">= 200,000 rows/s",
                     ROWS / seconds >= 200_000)
        report.check(f"RSS growth from {small:,} to {ROWS:,} rows (peak vs peak)",
                     f"{peak - small_peak:.1f} MB (peaks {small_peak:.0f} -> {peak:.0f} MB)", "< 50 MB",
                     peak - small_peak < 50)
        report.details.update(rows=ROWS, seconds=round(seconds, 2), peak_rss_mb=round(peak, 1),
                              small_rows=small, small_peak_rss_mb=round(small_peak, 1),
                              rss_at_first_rows_mb=round(first, 1), bare_seconds=round(floor_s, 2))
    report.write()
    return report


if __name__ == "__main__":
    main()
