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


def base_url_warning(base_url: str, host: str, port: int) -> str | None:
    """Mailed links are made from CAMPAIGN_BASE_URL: served on a local address and port it does not name, every
    link in every mail would lead elsewhere. A public URL (behind a proxy) is left alone."""
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    local = url.hostname in ("127.0.0.1", "localhost", "::1", host)
    if local and (url.port or (443 if url.scheme == "https" else 80)) != port:
        return (f"CAMPAIGN_BASE_URL is {base_url}, but this server listens on port {port}: the links in mails will "
                f"point there. Set CAMPAIGN_BASE_URL=http://{host}:{port} (or the public address of your proxy).")
    return None


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
    svc = services()  # fail here, with a clear message, on a missing key (a broken campaign is left out)
    for name, problem in getattr(svc.campaigns, "problems", {}).items():
        console.print(f"campaign {name} is not served until it is fixed: {problem}", style="red", markup=False)
    console.print(f"Serving on http://{host}:{port}  (mail: {s.smtp_url or s.mail_dir})")
    if warning := base_url_warning(s.base_url, host, port):
        console.print(warning, style="yellow", markup=False)
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
    """Check every campaign: its file, every letter template with hostile signers, the organisation and how fresh
    each target's details are. Lists every problem at once; fails (exit 1, or 2 for a file that does not load) on
    any error, prints warnings and passes."""
    from app import letter_check  # every letter template x target x language, with hostile sample signers
    from app.campaigns import CampaignError, load_campaign
    from app.db import utcnow

    s = settings()
    files = sorted(s.letters_dir.glob("*/campaign.toml"))
    broken, findings = 0, []
    for path in files:
        try:
            campaign = load_campaign(path)
        except CampaignError as exc:
            broken += 1
            findings += [letter_check.Finding("error", line) for line in str(exc).splitlines()]
            continue
        console.print(f"{campaign.slug}: {len(campaign.targets)} targets, languages {', '.join(campaign.languages)}")
        findings += [letter_check.Finding("error", p) for p in letter_check.check_campaign(campaign)]
        findings += letter_check.review(campaign, production=s.env == "production", today=utcnow().date())
    if not files:
        findings.append(letter_check.Finding("error", f"{s.letters_dir}: no */campaign.toml found"))
    for finding in findings:
        console.print(f"{finding.level}: {finding.text}", style="red" if finding.level == "error" else "yellow",
                      markup=False, highlight=False, soft_wrap=True)
    if broken:
        raise typer.Exit(2)
    if any(f.level == "error" for f in findings):
        raise typer.Exit(1)
    console.print("campaigns OK")
    console.print("letters OK")


SKELETON = Path(__file__).resolve().parent.parent / "campaign_skeleton"


@app.command("new")
def new(
    slug: str = typer.Argument(..., help="The new campaign's address: /c/SLUG (a-z, 0-9 and -)."),
    from_: str = typer.Option("", "--from", help="Copy this campaign instead of starting from the skeleton."),
) -> None:
    """Start a campaign folder that passes `campaign check`, as a draft only organisers see until you publish it."""
    import re
    import shutil
    from datetime import date

    s = settings()
    if not re.fullmatch(r"[a-z0-9-]{1,64}", slug):
        console.print("[red]SLUG may hold only a-z, 0-9 and -, at most 64 characters[/red]")
        raise typer.Exit(2)
    source = s.letters_dir / from_ if from_ else SKELETON
    folder = s.letters_dir / slug
    if from_ and not (source / "campaign.toml").is_file():
        console.print(f"[red]no campaign {from_!r} in {s.letters_dir}[/red]")
        raise typer.Exit(2)
    if folder.exists():
        console.print(f"[red]{folder} exists already[/red]")
        raise typer.Exit(2)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    toml = folder / "campaign.toml"
    text = re.sub(r'(?m)^slug = ".*"$', f'slug = "{slug}"', toml.read_text(encoding="utf-8"), count=1)
    text = re.sub(r"(?m)^draft = .*\n", "", text)
    draft = r"\1\ndraft = true  # organisers only: set to false to publish"
    text = re.sub(r'(?m)^(slug = ".*")$', draft, text, count=1)
    if not from_:
        text = re.sub(r"(?m)^opens_on = .*$", f"opens_on = {date.today().isoformat()}", text, count=1)
    toml.write_text(text, encoding="utf-8")
    console.print(f"{folder}: a draft, seen by organisers only (dashboard: Preview the public page).",
                  markup=False)
    edit = (f"change what is {from_}'s (title, case, sender, targets, letters)" if from_ else
            "write every [bracketed] text (docs/campaigns.md)")
    console.print(f"Next: {edit}, run `campaign check`, then set `draft = false`. A running server picks up each "
                  "saved change.", markup=False)


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
