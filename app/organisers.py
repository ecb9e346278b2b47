"""Organiser accounts: tokens (only their hashes are stored), sign-in sessions, and the CurrentOrganiser dependency.

A token is checked by looking up its hash and comparing in constant time; a revoked organiser is refused at once,
including any browser session they still hold, because every session is re-checked against its row. A browser
session is itself a row (organiser_sessions): sign-out and revocation delete it, so a copied cookie dies with it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import files, security
from app.db import Database, utcnow
from app.models import Organiser, OrganiserSession
from app.settings import Settings
from app.state import services

ENV_NAME = "env"  # the organiser CAMPAIGN_ORGANISER_TOKEN signs in as
LOCAL_NAME = "local"  # the organiser `campaign serve` creates in development
SESSION_COOKIE = "organiser"
SESSION_SECONDS = 12 * 3600
TOKEN_FILE = "organiser.token"  # noqa: S105 - a file name, not a secret


class OrganiserError(Exception):
    """A name is invalid or taken, or no organiser matches."""


@dataclass(frozen=True)
class Who:
    """The signed-in organiser: `id` is None for the environment token."""

    id: int | None
    name: str


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise OrganiserError("a name is 1 to 100 printable characters")
    if name == ENV_NAME:
        raise OrganiserError(f"{ENV_NAME!r} is the name of CAMPAIGN_ORGANISER_TOKEN; choose another")
    return name


def add(session: Session, *, name: str, now: datetime) -> tuple[Organiser, str]:
    """A new organiser and their token. The token is returned once and never stored."""
    name = _check_name(name)
    taken = session.scalar(select(Organiser.id).where(Organiser.name == name, Organiser.revoked_at.is_(None)))
    if taken is not None:
        raise OrganiserError(f"an organiser named {name!r} already exists (revoke it first)")
    token = security.new_token()
    row = Organiser(name=name, token_hash=security.token_hash(token), created_at=now)
    session.add(row)
    session.flush()
    return row, token


def list_all(session: Session) -> list[Organiser]:
    return list(session.scalars(select(Organiser).order_by(Organiser.id)))


def revoke(session: Session, *, name_or_id: str, now: datetime) -> list[Organiser]:
    """Revoke by id (digits) or by name; returns the rows revoked now (none if already revoked)."""
    query = select(Organiser).where(Organiser.revoked_at.is_(None))
    if name_or_id.isdigit():
        query = query.where(Organiser.id == int(name_or_id))
    else:
        query = query.where(Organiser.name == name_or_id.strip())
    rows = list(session.scalars(query))
    if not rows:
        raise OrganiserError(f"no active organiser {name_or_id!r}")
    for row in rows:
        row.revoked_at = now
    session.execute(delete(OrganiserSession).where(OrganiserSession.organiser_id.in_([r.id for r in rows])))
    return rows


def _env_fingerprint(settings: Settings) -> str:
    return security.token_hash(settings.organiser_token).hex()[:16]


def authenticate(session: Session, token: str, *, settings: Settings) -> Who | None:
    """The organiser a token belongs to, or None. Hash lookup, then a constant-time comparison."""
    if not token or len(token) > 200:
        return None
    if settings.organiser_token and hmac.compare_digest(token.encode(), settings.organiser_token.encode()):
        return Who(None, ENV_NAME)
    wanted = security.token_hash(token)
    row = session.scalar(select(Organiser).where(Organiser.token_hash == wanted))
    if row is None or row.revoked_at is not None or not security.same(row.token_hash, wanted):
        return None
    return Who(row.id, row.name)


# --- browser sessions -------------------------------------------------------------------------------------


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.secret_key, salt="organiser-session")


def session_cookie(who: Who, session: Session, *, settings: Settings, now: datetime) -> str:
    """A new browser session: a row holding the hash of a random handle, and a signed cookie carrying the handle,
    the organiser and a fingerprint of their token (a new CAMPAIGN_ORGANISER_TOKEN ends old sessions too)."""
    if who.id is None:
        fingerprint = _env_fingerprint(settings)
    else:
        row = session.get(Organiser, who.id)
        assert row is not None
        fingerprint = row.token_hash.hex()[:16]
    session.execute(delete(OrganiserSession).where(OrganiserSession.expires_at < now))  # keeps the table small
    handle = security.new_token()
    session.add(OrganiserSession(token_hash=security.token_hash(handle), organiser_id=who.id, created_at=now,
                                 expires_at=now + timedelta(seconds=SESSION_SECONDS)))
    return _serializer(settings).dumps({"id": who.id, "fp": fingerprint, "s": handle})


def _cookie_data(cookie: str | None, settings: Settings) -> dict | None:
    if not cookie or len(cookie) > 500:
        return None
    try:
        data = _serializer(settings).loads(cookie, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fp"), str) or not isinstance(data.get("s"), str):
        return None
    return data


def end_session(session: Session, cookie: str | None, *, settings: Settings) -> None:
    """Sign-out: the session's row goes, so this cookie (and any copy of it) is refused from now on."""
    data = _cookie_data(cookie, settings)
    if data is not None:
        session.execute(delete(OrganiserSession).where(OrganiserSession.token_hash == security.token_hash(data["s"])))


def from_cookie(session: Session, cookie: str | None, *, settings: Settings, now: datetime) -> Who | None:
    data = _cookie_data(cookie, settings)
    if data is None:
        return None
    live = session.scalar(select(OrganiserSession).where(
        OrganiserSession.token_hash == security.token_hash(data["s"])))
    if live is None or live.expires_at <= now or live.organiser_id != data.get("id"):
        return None
    if data.get("id") is None:
        if settings.organiser_token and hmac.compare_digest(data["fp"], _env_fingerprint(settings)):
            return Who(None, ENV_NAME)
        return None
    if not isinstance(data["id"], int):
        return None
    row = session.get(Organiser, data["id"])
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash.hex()[:16], data["fp"]):
        return None
    return Who(row.id, row.name)


# --- the dependency ---------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="An organiser token (`campaign organiser add NAME`).")


def current_organiser(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Who:
    """Bearer token first (API clients), else the session cookie (the browser). Refused: 401 for the API, a
    redirect to the sign-in page for pages."""
    svc = services(request)
    with svc.db.read() as session:
        if credentials is not None:
            who = authenticate(session, credentials.credentials, settings=svc.settings)
        else:
            who = from_cookie(session, request.cookies.get(SESSION_COOKIE), settings=svc.settings, now=utcnow())
    if who is not None:
        return who
    if request.url.path.startswith("/api/"):
        raise HTTPException(
            401, "An organiser token is required.", headers={"WWW-Authenticate": 'Bearer realm="organiser"'}
        )
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise HTTPException(303, "Sign in first.", headers={"Location": f"/organiser/login?next={quote(target)}"})


CurrentOrganiser = Annotated[Who, Depends(current_organiser)]


# --- development -----------------------------------------------------------------------------------------


def token_file(settings: Settings) -> Path:
    return settings.var_dir / TOKEN_FILE


def ensure_dev_token(db: Database, *, settings: Settings, now: datetime) -> Path | None:
    """In development with no organiser and no CAMPAIGN_ORGANISER_TOKEN, create organiser "local" and write its
    token to var/organiser.token (owner-only). Returns the file when it holds a valid token, else None."""
    if settings.env != "development" or settings.organiser_token:
        return None
    path = token_file(settings)
    with db.write.begin() as session:
        active = session.scalar(select(Organiser.id).where(Organiser.revoked_at.is_(None)).limit(1))
        if active is not None:
            if path.exists() and authenticate(session, path.read_text().strip(), settings=settings):
                return path
            return None
        _, token = add(session, name=LOCAL_NAME, now=now)
        files.write_private(path, token + "\n")
    return path
