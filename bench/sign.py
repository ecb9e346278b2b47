"""Sign intake under sustained load: POSTs of distinct valid signers to the JSON API, everything as shipped
(validation, dedupe, sealing, the confirmation mail queued in the same transaction), against /api/v1/ping of the
same app on the same server as the baseline. On SQLite, then on PostgreSQL when one runs on 127.0.0.1:5432.

Goals (issue 6): sign >= 0.5x baseline req/s; p99 < 50 ms at 80 % of the achieved sign rate (open loop, see
bench/openloop.py); 0 errors; rows stored == 202s answered. Issue 16 item 5: that p99 in five runs out of five
(BENCH_SIGN_P99_RUNS), and when it misses (or BENCH_PROFILE=1), one more run at 80 % with py-spy sampling the
server and its sign-writer process (bench/profile.py), whose top functions say what limits it.

    python -m bench.sign            BENCH_SECONDS=8 (per run)  BENCH_WORKERS=1 (SQLite)  BENCH_PG_WORKERS=2
                                    BENCH_SIGN_SQLITE_ONLY=1 (skip the PostgreSQL run)  BENCH_SIGN_P99_RUNS=5
                                    BENCH_PROFILE=1 (always profile) / 0 (never)
"""

from __future__ import annotations

import json
import os
import time
import uuid

from sqlalchemy import create_engine, func, select

from app.models import Notice, Signature
from bench import harness, profile
from bench.harness import Load, Report

SLUG = "mamay"
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
P99_RUNS = int(os.environ.get("BENCH_SIGN_P99_RUNS", "5"))
PROFILE = os.environ.get("BENCH_PROFILE", "")
OPEN_LOOP_BODY = json.dumps({
    "name": "Open Loop {n}", "email": "{tag}-{n}@example.org", "country": "KZ", "city": "Almaty",
    "message": "Free him now.", "consent": True, "lang": "{lang}",
})


def stored(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            signatures = conn.scalar(select(func.count()).select_from(Signature).where(Signature.campaign == SLUG))
            # Every signature writes a notice (its confirmation mail is made from it off the sign path); the
            # server runs without its outbox worker here, so each is still waiting.
            mails = conn.scalar(select(func.count()).select_from(Notice))
        return signatures or 0, mails or 0
    finally:
        engine.dispose()


def measure(report: Report, *, label: str, database_url: str, var_dir, workers: int, connections: int) -> dict:
    env = harness.app_env(var_dir, database_url)
    harness.campaign_cli("db", "upgrade", env=env)
    url = database_url or f"sqlite:///{var_dir / 'campaign.db'}"
    run = uuid.uuid4().hex[:6]
    accepted = 0
    pings: list[Load] = []
    signs: list[Load] = []
    with harness.server(env, workers=workers, log_dir=var_dir) as srv:
        ping_url, sign_url = f"{srv.base}/api/v1/ping", f"{srv.base}/api/v1/campaigns/{SLUG}/signatures"
        # Warm up both paths (imports, caches, the SQLite page cache), then alternate so that a noisy
        # neighbour on this shared machine hits both sides alike; the best run of each side is compared.
        harness.wrk(ping_url, script="get.lua", seconds=2, connections=connections)
        accepted += harness.wrk(sign_url, script="sign.lua", args=[SLUG, f"{run}-warm"], seconds=2,
                                connections=connections).ok
        for i in range(2):
            pings.append(harness.wrk(ping_url, script="get.lua", seconds=SECONDS, connections=connections))
            print(f"  [{label}] ping  {pings[-1].line()}", flush=True)
            signs.append(harness.wrk(sign_url, script="sign.lua", args=[SLUG, f"{run}-{i}"], seconds=SECONDS,
                                     connections=connections))
            print(f"  [{label}] sign  {signs[-1].line()}", flush=True)
            accepted += signs[-1].ok
        best_ping = max(pings, key=lambda r: r.rps)
        best_sign = max(signs, key=lambda r: r.rps)
        # wrk stops counting at its deadline while up to one request per connection is still being served;
        # those are stored but never counted as answered, so the exact check is made on the open-loop run,
        # which waits for every answer.
        rate = 0.8 * best_sign.rps
        # The open-loop path warms up too (its connections, the first batches of each size), then is measured.
        accepted += harness.open_loop(sign_url, rate=rate / 2, seconds=3, body=OPEN_LOOP_BODY,
                                      tag=f"{run}-olwarm").ok
        time.sleep(1)
        rows_before, mails_before = stored(url)
        latency = harness.open_loop(sign_url, rate=rate, seconds=max(SECONDS, 10), body=OPEN_LOOP_BODY,
                                    tag=f"{run}-ol")
        rows_after, mails_after = stored(url)
        # Where the latency goal does hold: the same open loop at 60 % (reported, not a goal).
        latency_60 = harness.open_loop(sign_url, rate=0.6 * best_sign.rps, seconds=max(SECONDS, 10),
                                       body=OPEN_LOOP_BODY, tag=f"{run}-ol60")
        print(f"  [{label}] sign at 60 %: {latency_60.line()}", flush=True)
        print(f"  [{label}] sign at 80 %: {latency.line()}", flush=True)
        ping_latency = harness.open_loop(ping_url, rate=rate, seconds=5)
        print(f"  [{label}] ping at the same rate: {ping_latency.line()}", flush=True)
        # Issue 16 item 5: the same run at 80 % again, until there are P99_RUNS of them.
        repeats = [latency]
        for n in range(1, P99_RUNS):
            repeats.append(harness.open_loop(sign_url, rate=rate, seconds=max(SECONDS, 10), body=OPEN_LOOP_BODY,
                                             tag=f"{run}-ol{n}"))
            print(f"  [{label}] sign at 80 %, run {n + 1}: {repeats[-1].line()}", flush=True)
        missed = sum(r.p99_ms >= 50 for r in repeats)
        profiles: dict = {}
        if PROFILE == "1" or (missed and PROFILE != "0"):
            profiles = profile_run(srv, sign_url, rate, label, run)
        rss = srv.rss_mb()
        peak = srv.peak_rss_mb()
    # The server has shut down cleanly (SIGTERM): count what is durable and compare with what was accepted.
    rows, mails = stored(url)
    errors = sum(r.errors + r.bad for r in signs) + latency.errors + latency.bad + latency_60.errors + latency_60.bad
    in_flight = rows_before - accepted
    # The 0.5x goal is the shipped setup's (SQLite, issue 6 item 2); the PostgreSQL ratio is reported (item 8): on
    # one 2-core box its server shares the cores with the app and the load, while 2 processes double the baseline.
    report.figure(f"{label}: sign req/s", best_sign.rps, "req/s", best_ping.rps, "GET /api/v1/ping",
                  goal=0.5 if not database_url else None,
                  notes={"workers": workers, "connections": connections})
    report.check(f"{label}: sign p99 at 80 % of achieved rate ({rate:.0f} req/s, open loop)",
                 f"p50 {latency.p50_ms:.1f} ms, p90 {latency.p90_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms",
                 "p99 < 50 ms", latency.p99_ms < 50)
    report.check(f"{label}: sign p99 < 50 ms at 80 % ({rate:.0f} req/s) in {len(repeats)} runs",
                 f"{len(repeats) - missed} of {len(repeats)} (p99 {', '.join(f'{r.p99_ms:.1f}' for r in repeats)} ms)",
                 f"{len(repeats)} of {len(repeats)}", missed == 0)
    errors += sum(r.errors + r.bad for r in repeats[1:])
    report.check(f"{label}: errors (socket errors and non-202 answers)", errors, "0", errors == 0)
    ol_rows, ol_mails = rows_after - rows_before, mails_after - mails_before
    report.check(f"{label}: rows stored vs 202s answered (open-loop run, every answer awaited)",
                 f"{ol_rows} rows, {latency.ok} answered 202, {ol_mails} notices (mails to be)",
                 "rows == 202s == notices", ol_rows == latency.ok == ol_mails)
    report.check(f"{label}: rows stored vs 202s counted by wrk (wrk drops answers in flight at its deadline)",
                 f"{rows_before} rows, {accepted} counted (with the open-loop warm-up), {in_flight} in flight at "
                 "cut-off",
                 f"0 <= in flight <= {len(signs) + 1} runs x {connections} connections",
                 0 <= in_flight <= (len(signs) + 1) * connections)
    report.check(f"{label}: after a clean shutdown every stored signature has its notice",
                 f"{rows} rows, {mails} notices", "rows == notices", rows == mails)
    print(f"  [{label}] server RSS {rss:.0f} MB (peak {peak:.0f} MB)", flush=True)
    return {
        "workers": workers,
        "ping_runs": [vars(r) for r in pings],
        "sign_runs": [vars(r) for r in signs],
        "sign_latency_at_80pct": vars(latency),
        "sign_latency_at_60pct": vars(latency_60),
        "ping_latency_same_rate": vars(ping_latency),
        "sign_latency_at_80pct_runs": [vars(r) for r in repeats], "profiles": profiles,
        "rows": rows, "mails": mails, "wrk_counted_202": accepted, "wrk_in_flight_at_cutoff": in_flight,
        "open_loop_rows": ol_rows, "open_loop_202": latency.ok,
        "server_rss_mb": round(rss, 1), "server_peak_rss_mb": round(peak, 1),
    }


def profile_run(srv: harness.Server, sign_url: str, rate: float, label: str, run: str) -> dict:
    """One more open-loop run at 80 % with py-spy on the server process and on its sign writer."""
    pids = harness.server_roles(srv)
    seconds = max(SECONDS, 10)
    with profile.attached(pids, seconds, f"sign-profile-{label.lower()}") as found:
        load = harness.open_loop(sign_url, rate=rate, seconds=seconds, body=OPEN_LOOP_BODY, tag=f"{run}-prof")
    print(f"  [{label}] sign at 80 % under py-spy: {load.line()}", flush=True)
    profile.show(found)
    return {"load": vars(load), **found}


def main() -> Report:
    harness.header("sign intake (JSON API) vs GET /api/v1/ping")
    report = Report("sign")
    with harness.var_dir("sign-sqlite") as var_dir:
        report.details["sqlite"] = measure(
            report, label="SQLite", database_url="", var_dir=var_dir,
            workers=int(os.environ.get("BENCH_WORKERS", "1")), connections=32,
        )
    with harness.postgres_database("sign") as pg_url:
        if os.environ.get("BENCH_SIGN_SQLITE_ONLY"):
            report.details["postgresql"] = "skipped: BENCH_SIGN_SQLITE_ONLY is set"
        elif pg_url is None:
            print("  PostgreSQL not reachable on 127.0.0.1:5432: PostgreSQL run skipped", flush=True)
            report.details["postgresql"] = "skipped: no server on 127.0.0.1:5432"
        else:
            with harness.var_dir("sign-pg") as var_dir:
                report.details["postgresql"] = measure(
                    report, label="PostgreSQL", database_url=pg_url, var_dir=var_dir,
                    workers=int(os.environ.get("BENCH_PG_WORKERS", "2")), connections=32,
                )
    report.write()
    return report


if __name__ == "__main__":
    main()
