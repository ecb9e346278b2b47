"""Commands for the mail that must land: the DKIM key, the DNS records to publish, and reading bounces."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from app.cli.base import app, console, settings


@app.command("dkim-key")
def dkim_key(
    out: Path = typer.Option(None, "--out", help="Where to write the key (default: var/dkim.key)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key (mail signed with it stops "
                                                      "verifying once its DNS record is replaced)."),
) -> None:
    """Make a DKIM signing key (RSA 2048, readable by its owner only) and say what to set and publish."""
    from app import mail_auth

    s = settings()
    path = out or s.var_dir / "dkim.key"
    if path.exists() and not force:
        console.print(f"[red]{path} exists[/red]: pass --force to replace it")
        raise typer.Exit(2)
    key = mail_auth.new_key(path)
    console.print(f"DKIM key written to {path} (mode 0600). Set CAMPAIGN_DKIM_KEY_FILE={path} and "
                  "CAMPAIGN_DKIM_SELECTOR (e.g. mail1), then publish what `campaign dns` prints.", soft_wrap=True)
    sys.stdout.write(f"public record: {mail_auth.txt(key.public_record)}\n")


@app.command()
def dns(slug: str = typer.Option(None, "--slug", help="Only this campaign's sender domain (and the neutral one).")
        ) -> None:
    """Print the SPF, DKIM and DMARC records to publish for every domain our mail comes from."""
    from app import mail_auth
    from app.campaigns import CampaignError, load_campaigns

    s = settings()
    try:
        campaigns = load_campaigns(s.letters_dir)
        key = mail_auth.load(s)
    except (CampaignError, mail_auth.DkimError) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    if slug is not None and slug not in campaigns:
        console.print(f"[red]no campaign {slug!r}[/red]; known: {', '.join(campaigns)}")
        raise typer.Exit(2)
    chosen = [campaigns[slug]] if slug else list(campaigns.values())
    if key is None:
        console.print("[yellow]No DKIM key configured[/yellow] (CAMPAIGN_DKIM_SELECTOR, CAMPAIGN_DKIM_KEY_FILE; "
                      "`campaign dkim-key` makes one): mail goes unsigned and DMARC can only monitor.")
    for name, value in mail_auth.dns_records(s, chosen, key):
        sys.stdout.write(f"{name} TXT {mail_auth.txt(value)}\n")


@app.command()
def bounces(maildir: Path = typer.Option(..., "--maildir", help="The Maildir that bounces+…@ delivers to.")) -> None:
    """Record the delivery reports in a Maildir: each bounce marks its mail (and a signer's letter) as bounced.
    Handled reports move to cur/ flagged Seen; reports that match no mail of ours stay and are listed."""
    from app import bounces as bounces_mod
    from app.db import Database, utcnow
    from app.encryption import KeyError_, load_keyring

    s = settings()
    try:
        keyring = load_keyring(s, create=False)
    except KeyError_ as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    db = Database(s.sqlalchemy_url)
    try:
        report = bounces_mod.read_maildir(maildir, db, keyring=keyring, local=s.bounce_local or "bounces",
                                          now=utcnow())
    except ValueError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    console.print(f"bounced {report.bounced}, already recorded {report.already}, not failures "
                  f"{report.not_failures}, unmatched {len(report.unmatched)}")
    for key in report.unmatched:
        console.print(f"  unmatched, left in place: {key}", markup=False)
