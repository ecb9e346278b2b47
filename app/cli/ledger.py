"""Commands for the delivery ledger: record an appeal pack delivered (`campaign delivered`) and export the ledger's
counts per target and channel (`campaign ledger`). Each owns its transaction; an export is logged."""

from __future__ import annotations

import getpass
from datetime import date
from pathlib import Path

import typer

from app.cli.base import app, campaign_and_keys, console, settings, write_chunks


def _who() -> str:
    return f"cli:{getpass.getuser()}"


@app.command("delivered")
def delivered(
    slug: str = typer.Option(..., "--slug", help="The campaign."),
    target: str = typer.Option(..., "--target", help="The target's key, as in campaign.toml."),
    on: str = typer.Option(..., "--on", help="The day it was delivered (YYYY-MM-DD)."),
    channel: str = typer.Option(..., "--channel", help="registered-post, post, courier, hand, email or online."),
    reference: str | None = typer.Option(None, "--reference", help="E.g. the registered-post number."),
    supporters: int | None = typer.Option(None, "--supporters", help="The count the pack carried (default: the "
                                                                     "confirmed count now)."),
    named: int | None = typer.Option(None, "--named", help="Supporters named in its annex (default: those who "
                                                           "asked to be named to this target now)."),
) -> None:
    """Record the organisation's appeal pack delivered to one target (recorded_by: you, as cli:USER)."""
    from app import ledger
    from app.db import Database, utcnow

    s = settings()
    campaign, _ = campaign_and_keys(s, slug)
    try:
        delivered_on = date.fromisoformat(on)
    except ValueError as exc:
        console.print("--on must be a date, YYYY-MM-DD", style="red", markup=False)
        raise typer.Exit(2) from exc
    db = Database(s.sqlalchemy_url)
    try:
        with db.write.begin() as session:
            row = ledger.record_pack(session, campaign=campaign, target=target, delivered_on=delivered_on,
                                     channel=channel, reference=reference, supporters=supporters, named=named,
                                     recorded_by=_who(), now=utcnow())
            shown = (f"pack to {row.target} delivered on {row.delivered_on.isoformat()} by {row.channel}"
                     f"{f', reference {row.reference}' if row.reference else ''}: {row.supporters} supporters, "
                     f"{row.named} named (recorded by {row.recorded_by}, #{row.id})")
    except ledger.LedgerError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    console.print(shown, markup=False, highlight=False)


@app.command("ledger")
def ledger_export(
    slug: str,
    format: str = typer.Option("csv", "--format", "-f", help="csv or json"),  # noqa: A002
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (readable by you only)."),
) -> None:
    """The delivery ledger's counts: letters per target and channel, bounces, packs delivered, replies (logged)."""
    from app import ledger
    from app.db import Database

    if format not in ("csv", "json"):
        console.print("[red]--format is csv or json[/red]")
        raise typer.Exit(2)
    s = settings()
    campaign, _ = campaign_and_keys(s, slug)
    db = Database(s.sqlalchemy_url)
    try:
        chunks = ledger.export(db, campaign=campaign, fmt=format, organiser=_who())  # type: ignore[arg-type]
        write_chunks(chunks, output)
        if output is None:
            return
    finally:
        db.dispose()
    console.print(f"written to {output}")
