"""Public counts at scale: GET /api/v1/campaigns/{slug}/stats with 1,000,000 stored signatures (made by
`campaign demo-data`), against GET /api/v1/ping of the same server. Then a mixed load (new signers, confirmations
through the real confirm-by-code flow, stats readers at once) and the checks afterwards: the organisers' stored
counter equals `counters.recount` (the rows themselves), and the public answer is the period's published snapshot
(public figures move only at the schedule's boundaries, in steps of the minimum cell size).

Goals (issue 6): stats >= 0.8x baseline req/s at 1 M signatures; exact counter after the mixed load.

    python -m bench.stats           BENCH_STATS_ROWS=1000000  BENCH_SECONDS=8
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

from sqlalchemy import create_engine, func, select

from app import counters, signing
from app.models import PublicFigures, Signature, SignatureCount
from bench import harness
from bench.harness import Report

SLUG = "mamay"
ROWS = int(os.environ.get("BENCH_STATS_ROWS", "1000000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))


def counts(url: str) -> tuple[int, int, int, int | None]:
    """(rows, recount of confirmed rows, sum of the stored counters, total of the latest published snapshot)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            from sqlalchemy.orm import Session

            with Session(conn) as session:
                rows = session.scalar(select(func.count()).select_from(Signature)) or 0
                recount = counters.recount(session, SLUG)
                counter = session.scalar(
                    select(func.coalesce(func.sum(SignatureCount.confirmed), 0)).where(SignatureCount.campaign == SLUG)
                )
                # Only the server writes snapshots, for the period it answers: its latest is what it served.
                snapshot = session.scalar(
                    select(PublicFigures.confirmed).where(PublicFigures.campaign == SLUG)
                    .order_by(PublicFigures.starts_at.desc()).limit(1)
                )
        return rows, recount, counter or 0, snapshot
    finally:
        engine.dispose()


def published(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/v1/campaigns/{SLUG}/stats", timeout=10) as answer:
        return json.loads(answer.read())


def confirm_some(url: str, settings_env: dict[str, str], seconds: float) -> int:
    """For `seconds`, confirm the signers who just signed, as they would: read the confirmation mail (made from
    their notices here) from the outbox, take the token from its link, and confirm it (signing.confirm_by_token,
    the real confirming transaction that moves the counter), from this process: another writer beside the server."""
    import re
    from email import message_from_bytes, policy

    from app import notices
    from app.db import Database, utcnow
    from app.models import OutboxMessage
    from app.settings import load_settings
    from app.state import Services

    settings = load_settings(
        env="development", var_dir=settings_env["CAMPAIGN_VAR_DIR"], database_url=url,
        data_key=harness.BENCH_DATA_KEY, secret_key=harness.BENCH_SECRET,
    )
    db = Database(url)
    svc = Services.build(settings, db=db)
    done, seen = 0, 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            # The server runs without its outbox worker here: make the confirmation mails from the notices as
            # the worker would (notices.answer_due), then read them.
            notices.answer_due(db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                               settings=svc.settings)
            with db.read() as session:
                mails = session.execute(
                    select(OutboxMessage.id, OutboxMessage.message_enc, OutboxMessage.key_id)
                    .where(OutboxMessage.kind == "confirm", OutboxMessage.id > seen)
                    .order_by(OutboxMessage.id).limit(200)
                ).all()
            if not mails:
                time.sleep(0.05)
                continue
            for mail_id, sealed, key_id in mails[::2]:  # every other signer confirms
                seen = max(seen, mail_id)
                msg = message_from_bytes(svc.keyring.open_bytes(sealed, "message", key_id), policy=policy.default)
                token = re.search(r"/confirm/([A-Za-z0-9_.-]+)", msg.get_body(("plain",)).get_content()).group(1)
                with db.write.begin() as session:
                    confirmed = signing.confirm_by_token(
                        session, token, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                        secret=svc.settings.secret_key, now=utcnow(),
                    )
                done += confirmed.counted
            seen = max(seen, mails[-1][0])
    finally:
        db.dispose()
    return done


def main() -> Report:
    harness.header(f"public stats at {ROWS:,} signatures vs GET /api/v1/ping")
    report = Report("stats")
    with harness.var_dir("stats") as var_dir:
        env = harness.app_env(var_dir)
        url = f"sqlite:///{var_dir / 'campaign.db'}"
        harness.campaign_cli("db", "upgrade", env=env)
        started = time.perf_counter()
        harness.campaign_cli("demo-data", SLUG, "--count", str(ROWS), "--confirmed-share", "0.8", env=env,
                             timeout=1800)
        fill_s = time.perf_counter() - started
        print(f"  demo-data: {ROWS:,} rows in {fill_s:.1f} s (CLI process, start-up included)", flush=True)
        with harness.server(env, log_dir=var_dir) as srv:
            ping_url, stats_url = f"{srv.base}/api/v1/ping", f"{srv.base}/api/v1/campaigns/{SLUG}/stats"
            harness.wrk(ping_url, script="get.lua", seconds=2)
            harness.wrk(stats_url, script="get.lua", seconds=2)
            pings, stats = [], []
            for _ in range(2):
                pings.append(harness.wrk(ping_url, script="get.lua", seconds=SECONDS))
                print(f"  ping   {pings[-1].line()}", flush=True)
                stats.append(harness.wrk(stats_url, script="get.lua", seconds=SECONDS))
                print(f"  stats  {stats[-1].line()}", flush=True)
            best_ping = max(pings, key=lambda r: r.rps)
            best_stats = max(stats, key=lambda r: r.rps)
            report.figure("stats req/s at 1 M signatures" if ROWS >= 1_000_000 else f"stats req/s at {ROWS:,}",
                          best_stats.rps, "req/s", best_ping.rps, "GET /api/v1/ping", goal=0.8,
                          notes={"stats_p99_ms": best_stats.p99_ms, "ping_p99_ms": best_ping.p99_ms})
            errors = sum(r.errors + r.bad for r in stats)
            report.check("stats errors", errors, "0", errors == 0)

            # Mixed load: signers through the API, confirmations beside it, readers of the stats, all at once.
            sign_url = f"{srv.base}/api/v1/campaigns/{SLUG}/signatures"
            confirmed_during: list[int] = []
            confirmer = threading.Thread(target=lambda: confirmed_during.append(confirm_some(url, env, 6)))
            confirmer.start()
            readers = threading.Thread(target=lambda: harness.wrk(stats_url, script="get.lua", seconds=5,
                                                                  connections=8, threads=1))
            readers.start()
            signs = harness.wrk(sign_url, script="sign.lua", args=[SLUG, "mixed"], seconds=5, connections=8,
                                threads=1)
            readers.join()
            confirmer.join()
            time.sleep(1.5)
            public = published(srv.base)
        rows, recount, counter, snapshot = counts(url)
        moved = confirmed_during[0] if confirmed_during else 0  # nothing when the confirmer thread failed
        report.check("exact after mixed load: stored counter == recount of rows (what organisers see)",
                     f"counter {counter:,}, recount {recount:,} "
                     f"({moved} confirmed and {signs.ok} signed during the load)",
                     "equal, with confirmations and signatures during the load",
                     counter == recount and moved > 0 and signs.ok > 0)
        total, k = public["confirmed"], public["min_cell"]
        report.check("public answer == the period's published snapshot",
                     f"answer {total:,}, snapshot {snapshot}, counter {counter:,}, k {k}",
                     "equal, a multiple of k, at most the counter",
                     total == snapshot and total % k == 0 and total <= counter)
        report.details.update(
            rows=rows, demo_data_seconds=round(fill_s, 1), ping_runs=[vars(r) for r in pings],
            stats_runs=[vars(r) for r in stats], mixed_sign_run=vars(signs),
        )
    report.write()
    return report


if __name__ == "__main__":
    main()
