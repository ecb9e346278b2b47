"""The `campaign` command: database, server, outbox, stats and checks for organisers and operators.

Every command builds its objects from one Settings (the CAMPAIGN_* environment) and owns its transactions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from app import counters, files, notices
from app import outbox as outbox_mod
from app.campaigns import CampaignError
from app.settings import ROOT, Settings, load_settings

app = typer.Typer(help="Letter-writing campaign service.", no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="Data keys that seal personal data at rest.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def settings() -> Settings:
    return load_settings()


def alembic_config(s: Settings):
    from alembic.config import Config

    cfg = Config(toml_file=str(ROOT / "pyproject.toml"))
    cfg.attributes["url"] = s.sqlalchemy_url
    return cfg


def services():
    from app.state import Services

    try:
        return Services.build(settings())
    except CampaignError as exc:
        console.print(f"[red]Campaign file error:[/red] {exc}")
        raise typer.Exit(2) from exc


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
    from app import mail

    svc = services()
    answer_notices = notices.answerer(svc.db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                                      settings=svc.settings)
    if once:
        answer_notices()
        transport = mail.transport(svc.settings)
        try:
            while report := outbox_mod.deliver_due(
                svc.db, keyring=svc.keyring, transport=transport, domain=mail.mail_domain(svc.settings),
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
    from app import letters  # every letter template x target x language, with hostile sample signers

    problems = [p for c in svc.campaigns.values() for p in letters.check_campaign(c)]
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


# --- organisers, exports, erasure, retention ----------------------------------------------------------------

organiser_app = typer.Typer(help="Organiser accounts (tokens for the dashboard and the export API).",
                            no_args_is_help=True)
app.add_typer(organiser_app, name="organiser")


def _announce_organiser_token(svc, login_url: str) -> None:
    """In development, make sure someone can sign in to /organiser at once, and say how."""
    from app import organisers
    from app.db import utcnow

    if svc.settings.organiser_token:
        console.print(f"Organiser sign-in: {login_url} with CAMPAIGN_ORGANISER_TOKEN", soft_wrap=True)
        return
    path = organisers.ensure_dev_token(svc.db, settings=svc.settings, now=utcnow())
    if path:
        console.print(f"Organiser sign-in: {login_url} with the token in {path}", soft_wrap=True)


@organiser_app.command("add")
def organiser_add(name: str) -> None:
    """Create an organiser and print their token (shown this once; only its hash is stored)."""
    from app import organisers
    from app.db import utcnow

    svc = services()
    try:
        with svc.db.write.begin() as session:
            row, token = organisers.add(session, name=name, now=utcnow())
    except organisers.OrganiserError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"organiser {row.name!r} (id {row.id}) created. The token, shown only now:")
    sys.stdout.write(token + "\n")


@organiser_app.command("list")
def organiser_list() -> None:
    """Every organiser: id, name, created, revoked."""
    from app import organisers

    svc = services()
    with svc.db.read() as session:
        rows = organisers.list_all(session)
    for row in rows:
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        sys.stdout.write(f"{row.id}\t{row.name}\tcreated {row.created_at:%Y-%m-%d %H:%M}\t{revoked}\n")
    if svc.settings.organiser_token:
        sys.stdout.write(f"-\t{organisers.ENV_NAME}\tCAMPAIGN_ORGANISER_TOKEN\tactive\n")


@organiser_app.command("revoke")
def organiser_revoke(name_or_id: str) -> None:
    """Revoke an organiser's token (by id or name): their API calls and browser sessions stop at once."""
    from app import organisers
    from app.db import utcnow

    svc = services()
    try:
        with svc.db.write.begin() as session:
            rows = organisers.revoke(session, name_or_id=name_or_id, now=utcnow())
    except organisers.OrganiserError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    for row in rows:
        console.print(f"revoked {row.name!r} (id {row.id})")


@app.command("export")
def export(
    slug: str,
    format: str = typer.Option("csv", "--format", "-f", help="csv or json"),  # noqa: A002
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (readable by you only)."),
    status: str = typer.Option("confirmed", help="confirmed, pending or all"),
    since: str | None = typer.Option(None, help="Only signatures made on or after this day (YYYY-MM-DD)."),
    counts: str | None = typer.Option(None, "--counts", help="Export counts instead: 'country' or 'day'."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes to read signatures with (0: one per CPU)."),
) -> None:
    """Export signatures (or counts) of a campaign, streamed, formula-safe, and written to the export log."""
    import getpass
    from datetime import date

    from app import exports
    from app.campaigns import load_campaigns
    from app.db import Database
    from app.encryption import KeyError_, load_keyring

    if format not in ("csv", "json") or status not in ("confirmed", "pending", "all") or counts not in (
        None, "country", "day"
    ):
        console.print("[red]--format is csv|json, --status confirmed|pending|all, --counts country|day[/red]")
        raise typer.Exit(2)
    try:
        since_day = date.fromisoformat(since) if since else None
    except ValueError as exc:
        console.print("[red]--since must be a date, YYYY-MM-DD[/red]")
        raise typer.Exit(2) from exc
    # Not services(): the web stack is not needed here, and its start-up counts in every export.
    s = settings()
    try:
        campaigns, keyring = load_campaigns(s.letters_dir), load_keyring(s, create=s.env != "production")
    except (CampaignError, KeyError_) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    if slug not in campaigns:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(campaigns)}")
        raise typer.Exit(2)
    who = f"cli:{getpass.getuser()}"
    db = Database(s.sqlalchemy_url)
    try:
        if counts:
            chunks = exports.counts(db, campaign=slug, by=counts, fmt=format, organiser=who)  # type: ignore[arg-type]
            if output is None:
                for chunk in chunks:
                    sys.stdout.write(chunk)
                return
            with files.open_private(output, "w", encoding="utf-8", newline="") as fh:
                for chunk in chunks:
                    fh.write(chunk)
        else:
            query = exports.SignatureQuery(campaign=slug, status=status, since=since_day)  # type: ignore[arg-type]
            if output is None:
                sys.stdout.flush()
                exports.write_signatures(db, keyring, query, sys.stdout.buffer, organiser=who, fmt=format,  # type: ignore[arg-type]
                                         workers=workers)
                return
            with files.open_private(output) as fh:
                exports.write_signatures(db, keyring, query, fh, organiser=who, fmt=format,  # type: ignore[arg-type]
                                         workers=workers)
    finally:
        db.dispose()
    console.print(f"written to {output}")


@app.command()
def erase(email: str) -> None:
    """Erase everything an address signed, in every campaign (confirmed signatures stay as anonymous units)."""
    from app import erasure
    from app.db import utcnow

    svc = services()
    with svc.db.write.begin() as session:
        done = erasure.erase(session, keys=erasure.email_keys(svc.keyring, email), now=utcnow())
    if not done.rows:
        console.print("no personal data held for that address")
        return
    console.print(f"erased: {done.kept_anonymous} confirmed signatures kept as anonymous units, {done.deleted} "
                  f"unconfirmed deleted, {done.mails_dropped} queued mails dropped")


@app.command()
def retention() -> None:
    """Apply the retention rules now (the outbox worker also does so every hour)."""
    from app import retention as retention_mod

    svc = services()
    report = retention_mod.run(svc.db, campaigns=svc.campaigns, settings=svc.settings)
    console.print(str(report))


@app.command("letters")
def letters_(
    slug: str,
    format: str = typer.Option(..., "--format", "-f", help="txt, mbox, eml, pdf, or pack (delivery pack of --target)"),  # noqa: A002
    output: Path = typer.Option(..., "--output", "-o", help="File (txt, mbox, pack) or folder (eml, pdf) to write."),
    lang: str | None = typer.Option(None, "--lang", help="Every letter in this language (default: each signer's)."),
    target: str | None = typer.Option(None, "--target", help="Only letters to this target (its key)."),
    since: str | None = typer.Option(None, "--since", help="Confirmed on or after this day (YYYY-MM-DD)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes to render with (0: one per CPU)."),
) -> None:
    """Every confirmed signer's letters, exactly as each target will see them; or one target's delivery pack."""
    import getpass
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from app import exports, letter_batch

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} signers/s" if task.speed else "")

    try:
        since_at = datetime.fromisoformat(since) if since else None
        if since_at is not None and since_at.tzinfo is None:
            since_at = since_at.replace(tzinfo=UTC)
    except ValueError as exc:
        console.print("[red]--since must be a date, YYYY-MM-DD[/red]")
        raise typer.Exit(2) from exc
    # Not services(): the web stack is not needed here, and every megabyte counts in a million-letter batch.
    from app.campaigns import load_campaigns
    from app.db import Database
    from app.encryption import KeyError_, load_keyring

    s = settings()
    try:
        campaigns, keyring = load_campaigns(s.letters_dir), load_keyring(s)
    except (CampaignError, KeyError_) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    if slug not in campaigns:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(campaigns)}")
        raise typer.Exit(2)
    db = Database(s.sqlalchemy_url)
    renderer = letter_batch.Renderer(s, db=db, keyring=keyring, campaign=campaigns[slug])
    batch = letter_batch.Batch(slug=slug, fmt=format, lang=lang, target=target, since=since_at)
    log_id = exports.start_log(db, organiser=f"cli:{getpass.getuser()}", campaign=slug,
                               what=f"letters {format} target={target or 'all'} lang={lang or 'own'} since={since}")
    written, complete = 0, False
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn())
    try:
        # Refreshed by hand, not by rich's thread: the batch forks its workers while the bar is shown.
        with Progress(*columns, console=console, auto_refresh=False) as progress:
            task = progress.add_task(f"{slug} {format}", total=None)

            def advance(n: int) -> None:
                progress.advance(task, n)
                progress.refresh()

            written = letter_batch.run(
                renderer, batch, output, workers=workers,
                on_plan=lambda total: progress.update(task, total=total, refresh=True), on_progress=advance,
            )
        complete = True
    except letter_batch.BatchError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    finally:
        exports.finish_log(db, log_id, rows=written, complete=complete)
        db.dispose()
    what = "supporters named in the pack" if format == "pack" else "letters"
    console.print(f"{written} {what} written to {output}")


@app.command("demo-data")
def demo_data(
    slug: str,
    count: int = typer.Option(..., "--count", min=1, help="How many fake signers to add."),
    confirmed_share: float = typer.Option(0.8, "--confirmed-share", min=0, max=1,
                                          help="Share of them already confirmed."),
    days: int = typer.Option(30, "--days", min=1, help="Spread their signing over this many days up to now."),
    processes: int = typer.Option(0, "--processes", min=0, help="Row-making processes (0: one per core)."),
) -> None:
    """Fill a campaign with realistic fake signers (for demos and benchmarks; addresses @example.org)."""
    from app import demo
    from app.db import utcnow

    svc = services()
    if slug not in svc.campaigns:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(svc.campaigns)}")
        raise typer.Exit(2)
    if svc.settings.env == "production":
        console.print("[red]refused: demo data is for development and test databases[/red]")
        raise typer.Exit(2)
    filled = demo.fill(svc.db, campaign=slug, count=count, keyring=svc.keyring, now=utcnow(),
                       confirmed_share=confirmed_share, days=days, processes=processes or None)
    console.print(f"{filled.rows} signers ({filled.confirmed} confirmed) added to {slug} in {filled.seconds:.1f} s "
                  f"({filled.rows_per_second:,.0f} rows/s, {filled.processes} processes)")


if __name__ == "__main__":
    app()
