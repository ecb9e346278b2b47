"""The `campaign` command's shared parts: the Typer app and its groups, the settings and services every command
builds from the CAMPAIGN_* environment, and the console. The commands are in operations.py and data.py."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from app.campaigns import CampaignError
from app.settings import ROOT, Settings, load_settings

app = typer.Typer(help="Letter-writing campaign service.", no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="Data keys that seal personal data at rest.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
organiser_app = typer.Typer(help="Organiser accounts (tokens for the dashboard and the export API).",
                            no_args_is_help=True)
app.add_typer(organiser_app, name="organiser")
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


def campaign_and_keys(s: Settings, slug: str):
    """One campaign and the data keys, for commands that need no web stack (its start-up would count in every
    export and every megabyte in a million-letter batch); exits 2 with the reason on a broken file or key."""
    from app.campaigns import load_campaigns
    from app.encryption import KeyError_, load_keyring

    try:
        campaigns, keyring = load_campaigns(s.letters_dir), load_keyring(s, create=s.env != "production")
    except (CampaignError, KeyError_) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    if slug not in campaigns:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(campaigns)}")
        raise typer.Exit(2)
    return campaigns[slug], keyring


def write_chunks(chunks, output: Path | None) -> None:
    """An export's text to stdout, or to a file readable by its owner only (it may hold personal data)."""
    from app import files

    if output is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
        return
    with files.open_private(output, "w", encoding="utf-8", newline="") as fh:
        for chunk in chunks:
            fh.write(chunk)
