"""Commands for organisers: accounts, exports, erasure, retention, letter batches and demo data. Each reads or
changes signers' data, so each writes only owner-readable files and logs what it exported."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from app import files
from app.cli.base import app, campaign_and_keys, console, organiser_app, services, settings, write_chunks


@organiser_app.command("add")
def organiser_add(
    name: str,
    campaign: str = typer.Option("*", help="The campaign's slug, or * for every campaign."),
    role: str = typer.Option("owner", help="viewer (counts), editor (+ exports, deliveries), owner (+ organisers)."),
) -> None:
    """Create an organiser with a role and print their token (shown this once; only its hash is stored)."""
    from app import audit, organisers
    from app.db import utcnow

    svc = services()
    try:
        with svc.db.write.begin() as session:
            row, token = organisers.add(session, name=name, now=utcnow(), roles={campaign: role})
            audit.record(session, organiser="cli", action="organiser_added", campaign=campaign,
                         what=f"{row.name}: {role}")
    except organisers.OrganiserError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"organiser {row.name!r} (id {row.id}) created, {role} of {campaign}. The token, shown only now:",
                  markup=False)
    sys.stdout.write(token + "\n")


@organiser_app.command("list")
def organiser_list() -> None:
    """Every organiser: id, name, created, revoked."""
    from app import organisers

    svc = services()
    with svc.db.read() as session:
        rows = [(row, organisers.roles_of(session, row.id)) for row in organisers.list_all(session)]
    for row, roles in rows:
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        held = ", ".join(f"{role} of {slug}" for slug, role in sorted(roles.items())) or "no role"
        sys.stdout.write(f"{row.id}\t{row.name}\tcreated {row.created_at:%Y-%m-%d %H:%M}\t{revoked}\t{held}\n")
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
    from app.db import Database

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
    s = settings()
    _, keyring = campaign_and_keys(s, slug)
    who = f"cli:{getpass.getuser()}"
    db = Database(s.sqlalchemy_url)
    try:
        if counts:
            chunks = exports.counts(db, campaign=slug, by=counts, fmt=format, organiser=who)  # type: ignore[arg-type]
            write_chunks(chunks, output)
            if output is None:
                return
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
    format: str = typer.Option(..., "--format", "-f", help="txt, mbox, eml, pdf, or pack (appeal pack to --target)"),  # noqa: A002
    output: Path = typer.Option(..., "--output", "-o", help="File (txt, mbox, pack) or folder (eml, pdf) to write."),
    lang: str | None = typer.Option(None, "--lang", help="Every letter in this language (default: each signer's)."),
    target: str | None = typer.Option(None, "--target", help="Only letters to this target (its key)."),
    since: str | None = typer.Option(None, "--since", help="Confirmed on or after this day (YYYY-MM-DD)."),
    day: str | None = typer.Option(None, "--date", help="The date the PDFs carry (YYYY-MM-DD; default today, "
                                   "UTC); a pack counts the confirmations up to its end."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes to render with (0: one per CPU)."),
    include_delivered: bool = typer.Option(
        False, "--include-delivered",
        help="Also the letters already delivered another way (sent for the signer, opened in their mail program, "
             "downloaded as PDF, or in an earlier batch)."),
) -> None:
    """Every confirmed signer's letters, exactly as each target will see them; or one target's delivery pack.
    Letters already delivered are left out unless --include-delivered; the ones written are recorded as delivered."""
    import getpass
    from datetime import UTC, date, datetime

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
    try:
        dated = date.fromisoformat(day) if day else None
    except ValueError as exc:
        console.print("[red]--date must be a date, YYYY-MM-DD[/red]")
        raise typer.Exit(2) from exc
    from app.db import Database

    s = settings()
    campaign, keyring = campaign_and_keys(s, slug)
    db = Database(s.sqlalchemy_url)
    renderer = letter_batch.Renderer(s, db=db, keyring=keyring, campaign=campaign)
    batch = letter_batch.Batch(slug=slug, fmt=format, lang=lang, target=target, since=since_at, day=dated,
                               include_delivered=include_delivered)
    log_id = exports.start_log(db, organiser=f"cli:{getpass.getuser()}", campaign=slug,
                               what=f"letters {format} target={target or 'all'} lang={lang or 'own'} since={since}"
                                    + (" with delivered" if include_delivered else ""))
    written, complete, left_out = 0, False, [0]
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
                on_left_out=lambda n: left_out.__setitem__(0, n),
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
    if format != "pack":
        console.print(f"{left_out[0]} letters left out: delivered already (sent for the signer, opened in their "
                      "mail program, downloaded, or in an earlier batch); --include-delivered includes them"
                      if left_out[0] else "no letter left out as delivered already")


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
