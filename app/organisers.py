"""Organiser accounts: tokens (only their hashes are stored), sign-in sessions, and the CurrentOrganiser dependency.

A token is checked by looking up its hash and comparing in constant time; a revoked organiser is refused at once,
including any browser session they still hold, because every session is re-checked against its row. A browser
session is itself a row (organiser_sessions): sign-out and revocation delete it, so a copied cookie dies with it.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import files, security
from app.db import Database, utcnow
from app.models import Organiser, OrganiserRole, OrganiserSession
from app.settings import Settings
from app.state import services

ENV_NAME = "env"  # the organiser CAMPAIGN_ORGANISER_TOKEN signs in as
LOCAL_NAME = "local"  # the organiser `campaign serve` creates in development
SESSION_COOKIE = "organiser"
SESSION_SECONDS = 12 * 3600
TOKEN_FILE = "organiser.token"  # noqa: S105 - a file name, not a secret
ROLES = ("viewer", "editor", "owner")  # viewer: counts; editor: + exports, deliveries, replies; owner: + organisers
EVERY = "*"  # a role in every campaign


class OrganiserError(Exception):
    """A name is invalid or taken, or no organiser matches."""


@dataclass(frozen=True)
class Who:
    """The signed-in organiser: `id` is None for the environment token (owner of every campaign)."""

    id: int | None
    name: str
    roles: Mapping[str, str] = field(default_factory=dict, compare=False)  # campaign (or "*") -> role

    def role(self, campaign: str) -> str | None:
        return self.roles.get(campaign) or self.roles.get(EVERY)

    def may(self, campaign: str, need: str) -> bool:
        role = self.role(campaign)
        return role is not None and ROLES.index(role) >= ROLES.index(need)

    def campaigns(self, known: Iterable[str]) -> list[str]:
        """The campaigns (of `known`) this organiser has any role in."""
        return [slug for slug in known if self.role(slug)]

    def owned(self, known: Iterable[str]) -> list[str] | None:
        """The campaigns this organiser owns; None: every campaign."""
        if self.roles.get(EVERY) == "owner":
            return None
        return [slug for slug in known if self.role(slug) == "owner"]


def require(who: Who, campaign: str, need: str) -> None:
    """404 where the organiser has no role in the campaign (its existence is not theirs to learn), 403 where their
    role is below what the act needs."""
    if who.role(campaign) is None:
        raise HTTPException(404, "No such campaign")
    if not who.may(campaign, need):
        raise HTTPException(403, "Your role in this campaign does not allow this.")


def roles_of(session: Session, organiser_id: int) -> dict[str, str]:
    return dict(session.execute(select(OrganiserRole.campaign, OrganiserRole.role)
                                .where(OrganiserRole.organiser_id == organiser_id)).all())


def set_role(session: Session, *, organiser_id: int, campaign: str, role: str | None) -> None:
    """Give an organiser a role in a campaign ("*": every campaign), or take it away (`role` None)."""
    if role is not None and role not in ROLES:
        raise OrganiserError(f"a role is one of {', '.join(ROLES)}")
    if campaign != EVERY and not re.fullmatch(r"[a-z0-9-]{1,64}", campaign):
        raise OrganiserError("a campaign is its slug (a-z, 0-9, -) or * for every campaign")
    existing = session.get(OrganiserRole, (organiser_id, campaign))
    if role is None:
        if existing is not None:
            session.delete(existing)
    elif existing is None:
        session.add(OrganiserRole(organiser_id=organiser_id, campaign=campaign, role=role))
    else:
        existing.role = role
    session.flush()


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise OrganiserError("a name is 1 to 100 printable characters")
    if name == ENV_NAME:
        raise OrganiserError(f"{ENV_NAME!r} is the name of CAMPAIGN_ORGANISER_TOKEN; choose another")
    return name


def add(session: Session, *, name: str, now: datetime, roles: Mapping[str, str] | None = None
        ) -> tuple[Organiser, str]:
    """A new organiser, with their roles (default: owner of every campaign), and their token. The token is returned
    once and never stored."""
    name = _check_name(name)
    taken = session.scalar(select(Organiser.id).where(Organiser.name == name, Organiser.revoked_at.is_(None)))
    if taken is not None:
        raise OrganiserError(f"an organiser named {name!r} already exists (revoke it first)")
    token = security.new_token()
    row = Organiser(name=name, token_hash=security.token_hash(token), created_at=now)
    session.add(row)
    session.flush()
    for campaign, role in (roles if roles is not None else {EVERY: "owner"}).items():
        set_role(session, organiser_id=row.id, campaign=campaign, role=role)
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


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    role: str
    everywhere: bool  # the role is for every campaign (given by the operator, not changed from one campaign)


def members(session: Session, campaign: str) -> list[Member]:
    """The active organisers with a role in `campaign`, directly or in every campaign."""
    rows = session.execute(
        select(Organiser.id, Organiser.name, OrganiserRole.role, OrganiserRole.campaign)
        .join(OrganiserRole, OrganiserRole.organiser_id == Organiser.id)
        .where(Organiser.revoked_at.is_(None), OrganiserRole.campaign.in_([campaign, EVERY]))
        .order_by(Organiser.name, OrganiserRole.campaign)
    )
    found: dict[int, Member] = {}
    for organiser_id, name, role, where in rows:
        if organiser_id not in found or where == campaign:
            found[organiser_id] = Member(organiser_id, name, role, where == EVERY)
    return list(found.values())


def _env_fingerprint(settings: Settings) -> str:
    return security.token_hash(settings.organiser_token).hex()[:16]


def authenticate(session: Session, token: str, *, settings: Settings) -> Who | None:
    """The organiser a token belongs to, or None. Hash lookup, then a constant-time comparison."""
    if not token or len(token) > 200:
        return None
    if settings.organiser_token and hmac.compare_digest(token.encode(), settings.organiser_token.encode()):
        return Who(None, ENV_NAME, {EVERY: "owner"})
    wanted = security.token_hash(token)
    row = session.scalar(select(Organiser).where(Organiser.token_hash == wanted))
    if row is None or row.revoked_at is not None or not security.same(row.token_hash, wanted):
        return None
    return Who(row.id, row.name, roles_of(session, row.id))


# --- browser sessions -------------------------------------------------------------------------------------

SESSION_PURPOSE = "organiser-session v2"  # v2: sealed (security.seal_handle), no longer an itsdangerous value


def session_cookie(who: Who, session: Session, *, settings: Settings, now: datetime) -> str:
    """A new browser session: a row holding the hash of a random handle, and a sealed cookie (security.seal_handle)
    carrying the handle, the organiser and a fingerprint of their token (a new CAMPAIGN_ORGANISER_TOKEN ends old
    sessions too)."""
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
    return security.seal_handle(settings.secret_key, SESSION_PURPOSE,
                                json.dumps({"id": who.id, "fp": fingerprint, "s": handle}).encode())


def _cookie_data(cookie: str | None, settings: Settings) -> dict | None:
    if not cookie or len(cookie) > 500:
        return None
    sealed = security.open_handle(settings.secret_key, SESSION_PURPOSE, cookie, max_age=SESSION_SECONDS)
    try:
        data = json.loads(sealed) if sealed is not None else None
    except ValueError:
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
            return Who(None, ENV_NAME, {EVERY: "owner"})
        return None
    if not isinstance(data["id"], int):
        return None
    row = session.get(Organiser, data["id"])
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash.hex()[:16], data["fp"]):
        return None
    return Who(row.id, row.name, roles_of(session, row.id))


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
