"""What tests share besides fixtures (those are in conftest.py): settings for a test, the SMTP sink, signing
through the form, delivering mail, reading it, counting rows. Tests import from here, never from conftest.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import notices, outbox, smtp
from app.models import Notice, OutboxMessage, Signature
from app.settings import ROOT, Settings
from app.state import Services

TEST_DATA_KEY = "t1:" + base64.urlsafe_b64encode(b"k" * 32).decode()


PARTNER = "https://partner.example"  # a partner site that frames the embed (partner_client)
TEST_SECRET = "test-secret-0123456789abcdef0123456789"


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
START = datetime(2026, 12, 5, 10, 0, 30, tzinfo=UTC)  # 30 s into a period (boundaries every 10 minutes)


class Clock:
    """A clock the app reads (Services.clock); tests move it instead of sleeping."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def local_redis(db: int):
    """(URL, client) of a Redis database on the local server, emptied first; the test is skipped without one."""
    redis = pytest.importorskip("redis")
    r = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=1)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable ({exc})")
    r.flushdb()
    return f"redis://127.0.0.1:6379/{db}", r


def alembic_config(url: str) -> Config:
    cfg = Config(toml_file=str(ROOT / "pyproject.toml"))
    cfg.attributes["url"] = url
    return cfg


def migrate(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "var_dir": tmp_path / "var",
        "database_url": database_url,
        "data_key": TEST_DATA_KEY,
        "secret_key": TEST_SECRET,
        "outbox_in_process": False,
        "sign_rate_limit": "off",
        "mail_jitter_seconds": 0,  # mails due at once; tests/test_safety_signing.py checks the jitter itself
        # In-process tests sign in a thread (one writer process per test would cost a second each); the writer
        # process is tested in test_intake.py and by every test that runs `campaign serve`.
        "sign_writer": "thread",
        "base_url": "http://testserver",
        "letters_dir": ROOT / "templates" / "letters",
    }
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage


@dataclass
class SMTPSink:
    """What the handler does with each DATA: keep it, or answer with a scripted error code."""

    messages: list[Received] = field(default_factory=list)
    fail_with: str | None = None  # e.g. "451 4.3.0 try later" or "550 5.1.1 no such user"
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        if self.fail_with:
            return self.fail_with
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.messages if address in r.envelope_to]


class SMTPServer:
    def __init__(self) -> None:
        self.sink = SMTPSink()
        self.port = free_port()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None


def answer_notices(svc: Services, *, now: datetime | None = None) -> int:
    """What the outbox worker does first: turn waiting notices into mail (confirmations, reminders, erase links)."""
    return notices.answer_due(svc.db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                              settings=svc.settings, now=now)


def deliver(svc: Services, smtp_url: str, **kwargs) -> outbox.Report:
    """Answer the waiting notices, then run the outbox sender until nothing more is due (one pass per batch),
    as the outbox worker does."""
    answer_notices(svc, now=kwargs.get("now"))
    total = outbox.Report()
    transport = smtp.SMTPTransport(smtp_url)
    try:
        while True:
            report = outbox.deliver_due(svc.db, keyring=svc.keyring, transport=transport, domain="test", **kwargs)
            total.sent += report.sent
            total.retried += report.retried
            total.failed += report.failed
            total.deferred += report.deferred
            total.errors += report.errors
            if not report.sent:
                return total
    finally:
        transport.close()


def body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def csrf_token(client: TestClient, url: str) -> str:
    """GET a page like a browser does and return the CSRF token of its form (the cookie stays in the client)."""

    page = client.get(url)
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "page has no CSRF token"
    return found.group(1)


SIGNER = {
    "name": "Aigerim Test",
    "email": "aigerim@example.org",
    "country": "DE",
    "city": "Berlin",
    "message": "",
    "consent": "on",
    "lang": "en",
}


BROWSER_POST = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}  # a form post from our own page


def sign_form(client: TestClient, slug: str = "mamay", **fields: str):
    """Sign as a browser does: load the petition (it carries no token and sets no cookie), post its form."""
    page = client.get(f"/c/{slug}?lang={fields.get('lang', 'en')}")
    assert page.status_code == 200, page.text[:300]
    return client.post(f"/c/{slug}/sign", data={**SIGNER, **fields}, headers=BROWSER_POST, follow_redirects=False)


def link_in(text_body: str, path: str) -> str:

    found = re.search(rf"https?://[^\s]+({re.escape(path)}[^\s?]+)", text_body)
    assert found, f"no {path} link in mail:\n{text_body}"
    return found.group(1)


def count(svc: Services, model: type = Signature) -> int:
    """Rows of one table."""
    with svc.db.read() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def to_be_mailed(svc: Services) -> int:
    """What waits to become or to be sent as mail: notices and outbox rows."""
    return count(svc, Notice) + count(svc, OutboxMessage)


def counts(svc: Services) -> tuple[int, int]:
    """Signatures, and what waits to be mailed about them (a notice each, then mails)."""
    return count(svc), to_be_mailed(svc)


def settings_env(settings: Settings) -> dict[str, str]:
    """The CAMPAIGN_* variables that give another process (the CLI, a server) these settings: each value that was
    set, as pydantic-settings reads it back. The one mapping from Settings to an environment."""
    env = {}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        env[f"CAMPAIGN_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env
