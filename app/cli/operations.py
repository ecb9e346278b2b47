"""Commands for operators: the database schema, serving, the mail sender, figures, checks and data keys."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from app import counters, notices, smtp
from app import outbox as outbox_mod
from app.cli.base import _announce_organiser_token, alembic_config, app, console, db_app, keys_app, services, settings


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the migrations (creates the SQLite file under var/ when needed)."""
    from alembic import command

    s = settings()
    if s.sqlalchemy_url.startswith("sqlite:///"):
        Path(s.sqlalchemy_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(s), revision)
    console.print(f"database at {revision}")


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = typer.Option(
        1, min=1, help="Server processes (more than one needs CAMPAIGN_REDIS_URL; more than one host, PostgreSQL)."
    ),
) -> None:
    """Serve the site. The outbox sender runs inside each server process unless CAMPAIGN_OUTBOX_IN_PROCESS=0."""
    import uvicorn

    s = settings()
    if workers > 1 and not s.redis_url:
        # Each process would keep its own rate limits (N times the budget) and its own record of used embed
        # forms (a replay through another worker): several workers share them through Redis, or do not start.
        console.print(f"[red]--workers {workers} needs CAMPAIGN_REDIS_URL:[/red] without Redis every worker keeps "
                      "its own rate limits and used-form records. Set CAMPAIGN_REDIS_URL or use --workers 1.")
        raise typer.Exit(2)
    svc = services()  # fail here, with a clear message, on a broken campaign file or a missing key
    console.print(f"Serving on http://{host}:{port}  (mail: {s.smtp_url or s.mail_dir})")
    _announce_organiser_token(svc, f"http://{host}:{port}/organiser/login")
    # Access logs are off: they would hold client IP addresses.
    uvicorn.run(
        "app.main:served_app", factory=True, host=host, port=port, workers=workers,
        access_log=s.access_log, server_header=False, proxy_headers=bool(s.trusted_proxies),
        forwarded_allow_ips=s.trusted_proxies or None,
    )


@app.command()
def outbox(once: bool = typer.Option(False, "--once", help="Send what is due now, then exit.")) -> None:
    """Run the mail sender alone (for hosts that do not serve pages)."""
    svc = services()
    answer_notices = notices.answerer(svc.db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                                      settings=svc.settings)
    if once:
        answer_notices()
        stamp = outbox_mod.make_stamp(svc.keyring, svc.settings)
        transport = smtp.transport(svc.settings)
        try:
            while report := outbox_mod.deliver_due(
                svc.db, keyring=svc.keyring, transport=transport, stamp=stamp,
                target_hourly_cap=svc.settings.target_hourly_cap, max_attempts=svc.settings.outbox_max_attempts,
            ):
                console.print(f"sent {report.sent}, retry later {report.retried}, failed {report.failed}, "
                              f"deferred {report.deferred}")
                if not report.sent:
                    break
        finally:
            transport.close()
        return
    from app import retention

    worker = outbox_mod.Worker(svc.db, keyring=svc.keyring, settings=svc.settings,
                               poll_seconds=svc.settings.outbox_poll_seconds,
                               on_idle=retention.hourly(svc.db, campaigns=svc.campaigns, settings=svc.settings),
                               before=answer_notices)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(1)
    except KeyboardInterrupt:
        worker.stop()


@app.command()
def stats(slug: str, exact: bool = typer.Option(False, help="Unfolded counts (organisers only).")) -> None:
    """Print the confirmed count and the per-country and per-day figures as JSON."""
    import json

    svc = services()
    campaign = svc.campaigns.get(slug)
    if campaign is None:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(svc.campaigns)}")
        raise typer.Exit(2)
    if exact:
        with svc.db.read() as session:
            by_country, by_day = counters.exact_counts(session, slug)
            out = {"campaign": slug, "confirmed": sum(by_country.values()), "goal": campaign.goal,
                   "by_country": by_country, "by_day": by_day, "recount": counters.recount(session, slug)}
    else:
        st = svc.stats_cache.stats(campaign)  # what the pages show in this period
        out = {"campaign": slug, "confirmed": st.confirmed, "goal": st.goal, "by_country": st.by_country,
               "by_day": st.by_day}
    sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")


@app.command()
def check() -> None:
    """Load every campaign file and report the first error with its file and field."""
    svc = services()
    for campaign in svc.campaigns.values():
        console.print(f"{campaign.slug}: {len(campaign.targets)} targets, languages {', '.join(campaign.languages)}")
    console.print("campaigns OK")
    from app import letter_check  # every letter template x target x language, with hostile sample signers

    problems = [p for c in svc.campaigns.values() for p in letter_check.check_campaign(c)]
    for problem in problems:
        console.print(problem, style="red", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print("letters OK")


@keys_app.command("ensure")
def keys_ensure() -> None:
    """Make sure a data key exists: CAMPAIGN_DATA_KEY, or var/data.key (generated here in development)."""
    from app import encryption

    s = settings()
    if s.data_key:
        console.print("data key: from CAMPAIGN_DATA_KEY")
        return
    path = encryption.key_file(s)
    existed = path.exists()
    encryption.load_keyring(s, create=True)
    if not existed:
        console.print(f"[yellow]Generated a new data key in {path}.[/yellow] It seals every signer's personal "
                      "data: back it up, or set CAMPAIGN_DATA_KEY. Losing it loses that data.")
    else:
        console.print(f"data key: {path}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-seal every personal field under a new key, without losing a row (safe to re-run if interrupted)."""
    from app import encryption, keys
    from app.db import Database

    s = settings()
    from_file = not s.data_key
    old_spec = s.data_key or encryption.key_file(s).read_text().strip()
    old_ids = [part.partition(":")[0] if ":" in part else f"k{i + 1}"
               for i, part in enumerate(p for p in old_spec.split(",") if p.strip())]
    n = 1 + max((int(i[1:]) for i in old_ids if i[1:].isdigit()), default=0)
    new_spec = f"k{n}:{encryption.new_key()}"
    ring = encryption.Keyring.parse(f"{new_spec},{old_spec}")
    if from_file:
        encryption.write_key_file(encryption.key_file(s), f"{new_spec},{old_spec}")  # both, until all is moved
    else:
        console.print("[yellow]Set CAMPAIGN_DATA_KEY to this before restarting the service "
                      "(it holds the new and the old key):[/yellow]")
        sys.stdout.write(f"{new_spec},{old_spec}\n")
    db = Database(s.sqlalchemy_url)
    try:
        moved = keys.reseal(db, ring)
    finally:
        db.dispose()
    if from_file:
        encryption.write_key_file(encryption.key_file(s), new_spec)
        console.print(f"re-sealed {moved} rows under k{n}; {encryption.key_file(s)} now holds only the new key")
    else:
        console.print(f"re-sealed {moved} rows under k{n}; CAMPAIGN_DATA_KEY may now be just: {new_spec}")
from app.cli import mailing  # noqa: E402, F401 - registers the mail commands (dkim-key, dns, bounces)
