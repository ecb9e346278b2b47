"""Our static files, read into memory once and served from there by an async route (no thread hop, no disk).

Each file is also served under a name that holds a hash of its content (`style.<hash>.css`), which pages link to
and browsers and proxies may keep for a year (`immutable`): a changed file gets a new name, so no one keeps an
old one. The plain name still answers (a page cached before a deploy), revalidated by its ETag.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

STATIC_DIR = Path(__file__).parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=0, must-revalidate"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class File:
    body: bytes
    media_type: str
    etag: str
    hashed: bool  # asked for by its content-hashed name


def hashed_name(name: str, digest: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{digest}.{suffix}" if dot else f"{name}.{digest}"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match header against one strong ETag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


@cache
def files() -> dict[str, File]:
    """Every file under static/, by its plain and by its hashed name (paths relative to static/)."""
    found: dict[str, File] = {}
    for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:12]
        name = path.relative_to(STATIC_DIR).as_posix()
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        found[name] = File(body, media_type, f'"{digest}"', hashed=False)
        found[hashed_name(name, digest)] = File(body, media_type, f'"{digest}"', hashed=True)
    return found


@cache
def url(name: str) -> str:
    """The content-hashed URL of a static file, for templates (`{{ static_url("style.css") }}`)."""
    digest = files()[name].etag.strip('"')
    return f"/static/{hashed_name(name, digest)}"


@router.get("/static/{name:path}")
async def static(request: Request, name: str) -> Response:
    found = files().get(name)
    if found is None:
        raise HTTPException(404)  # as StaticFiles answered
    headers = {"Cache-Control": IMMUTABLE if found.hashed else REVALIDATE, "ETag": found.etag}
    if etag_matches(request.headers.get("if-none-match"), found.etag):
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
