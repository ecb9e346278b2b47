"""Public pages rendered once per (page, language, figures period) and handed out as bytes.

A public page holds nothing of the visitor (no CSRF token, no cookie: the sign form is guarded by its Origin, see
security.same_origin), and its figures change only at the publication boundaries (counters.period), so one
rendering serves everyone until the next boundary: from this process's memory, and from any proxy in front, which
`Cache-Control: public, max-age=<seconds to the boundary>` allows. Pages that hold one per-visitor value (the
embed's single-use form token, the thank-you page's CSRF token) are cached as bytes around a marker that each
answer fills in; those answers are `no-store`, since the filled-in value is the visitor's own.

At a boundary one request per page renders the new period (in a thread: it may read the figures from the
database) while the others are answered from the previous period's bytes, so a spike never renders a page twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app import counters
from app.static_files import etag_matches

MAX_AGE_CAP = 600  # seconds: a proxy keeps a page at most this long, whatever the refresh interval
HTML = "text/html; charset=utf-8"
MARKER = "@@per-visitor-value@@"  # survives HTML escaping unchanged; never in a template or in campaign text


@dataclass(frozen=True)
class Entry:
    """One rendering: the whole page, or the bytes before and after the per-visitor marker."""

    starts_at: datetime
    ends_at: datetime
    head: bytes
    tail: bytes | None  # None: the page has no per-visitor value
    etag: str

    def fill(self, value: str) -> bytes:
        """The page with `value` (a token: URL-safe characters only, nothing to escape) at the marker."""
        return self.head if self.tail is None else self.head + value.encode() + self.tail


def _entry(html: str, starts_at: datetime, ends_at: datetime) -> Entry:
    raw = html.encode()
    head, marker, tail = raw.partition(MARKER.encode())
    if marker and MARKER.encode() in tail:
        raise ValueError("a cached page holds the per-visitor marker more than once")
    etag = '"' + hashlib.blake2b(raw, digest_size=12).hexdigest() + '"'
    return Entry(starts_at, ends_at, head if marker else raw, tail if marker else None, etag)


class PageCache:
    """Renderings by key (the page, its language and whatever else selects its bytes), for the current period."""

    def __init__(self, *, every: timedelta, clock: Callable[[], datetime], cap: int = MAX_AGE_CAP) -> None:
        self.every, self.clock, self.cap = every, clock, cap
        self._entries: dict[Hashable, Entry] = {}
        self._rendering: dict[Hashable, asyncio.Future[Entry]] = {}

    def max_age(self, entry: Entry, now: datetime) -> int:
        """Seconds a proxy may keep this rendering: to the next figures boundary and never past midnight UTC
        (when a campaign opens or closes), capped."""
        midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        left = min(entry.ends_at, midnight) - now
        return max(0, min(self.cap, int(left.total_seconds())))

    async def get(self, key: Hashable, render: Callable[[], str]) -> tuple[Entry, bool]:
        """The rendering for `key` in the current period, and whether it is current (False: the previous period's,
        handed out while another request renders the new one). `render` runs in a thread, once per period."""
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry.starts_at <= now < entry.ends_at:
            return entry, True
        pending = self._rendering.get(key)
        if pending is not None:
            if entry is not None:
                return entry, False
            return await asyncio.shield(pending), True
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._rendering[key] = future
        try:
            starts_at, ends_at = counters.period(now, self.every)
            fresh = _entry(await run_in_threadpool(render), starts_at, ends_at)
            if counters.period(self.clock(), self.every)[0] == starts_at:  # a boundary passed meanwhile: not kept
                self._entries[key] = fresh
            future.set_result(fresh)
            return fresh, True
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a render nobody else awaited logs no warning
            raise
        finally:
            del self._rendering[key]

    async def public(self, key: Hashable, render: Callable[[], str], *, if_none_match: str | None,
                     negotiated: bool) -> Response:
        """A public page for anyone and any proxy: ETag, 304, `Cache-Control: public` to the next boundary.
        `negotiated`: the language came from Accept-Language (no `?lang=`), so caches must key on it too."""
        entry, current = await self.get(key, render)
        if entry.tail is not None:
            raise ValueError("a page with a per-visitor value is never public")
        age = self.max_age(entry, self.clock()) if current else 0
        headers = {"Cache-Control": f"public, max-age={age}", "ETag": entry.etag}
        if negotiated:
            headers["Vary"] = "Accept-Language"
        if etag_matches(if_none_match, entry.etag):
            return Response(status_code=304, headers=headers)
        return Response(entry.head, media_type=HTML, headers=headers)

    async def private(self, key: Hashable, render: Callable[[], str], value: str, *, status: int = 200
                      ) -> Response:
        """A page cached as bytes with one per-visitor value filled in: the answer itself is never stored."""
        entry, _ = await self.get(key, render)
        return Response(entry.fill(value), status_code=status, media_type=HTML, headers={"Cache-Control": "no-store"})


# --- answered again without routing ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Kept:
    """A public answer as the app gave it, kept until its max-age runs out by the app's clock."""

    expires_at: datetime
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # without Cache-Control, which is written for each answer
    body: bytes
    etag: bytes | None
    directives: bytes = b""  # the app's other Cache-Control directives (`, immutable`), said again each time


def _keepable(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool] | None:
    """(max-age, varies by language) of an answer the app marked `public`, or None when it may not be kept: no
    cookie, and varying by nothing but the language."""
    max_age, vary = None, False
    for name, value in headers:
        name = name.lower()
        if name == b"set-cookie":
            return None
        if name == b"cache-control":
            directives = [d.strip() for d in value.decode("latin-1").lower().split(",")]
            if "public" not in directives or "no-store" in directives or "private" in directives:
                return None
            ages = [d.removeprefix("max-age=") for d in directives if d.startswith("max-age=")]
            max_age = int(ages[0]) if ages and ages[0].isdigit() else None
        elif name == b"vary":
            fields = {f.strip() for f in value.decode("latin-1").lower().split(",")}
            if fields - {"accept-language"}:
                return None
            vary = True
    return (max_age, vary) if max_age else None


def _other_directives(headers: list[tuple[bytes, bytes]]) -> bytes:
    value = next((v for k, v in headers if k.lower() == b"cache-control"), b"")
    kept = [d.strip() for d in value.split(b",") if d.strip().lower() != b"public"
            and not d.strip().lower().startswith(b"max-age=")]
    return b"".join(b", " + d for d in kept if d)


ENTRY_OVERHEAD = 400  # bytes of Python objects around each kept answer (the key's tuple, Kept, its header tuples)


def _size(key: tuple, kept: Kept) -> int:
    """What one kept answer holds, its key included: a prober's long query strings and languages count, or a
    small file asked for with 60 kB query strings held twenty times the bound."""
    path, query, language = key
    return (len(path) + len(query) + len(language or b"") + len(kept.body)
            + sum(len(k) + len(v) for k, v in kept.headers) + ENTRY_OVERHEAD)


class Answered:
    """Pure ASGI middleware, a micro-cache in the process like deploy/nginx.conf's in front of it: a GET whose
    answer the app marked `Cache-Control: public, max-age=N` (a page of the page cache, a hashed static file) is
    answered again, by path, query and, when it varies by it, Accept-Language, from its bytes for those N seconds,
    without routing (most of a cached page's cost was the framework's). What the app did not mark public never
    is; a campaign reloaded empties it. SecurityHeaders wraps it, so every answer gets the same headers."""

    MAX_BYTES = 8 << 20  # keys and bodies: bounded whatever query strings or languages a prober invents

    def __init__(self, app, *, clock: Callable[[], datetime], version: Callable[[], object]) -> None:
        self.app, self.clock, self.version = app, clock, version
        self._kept: dict[tuple, Kept] = {}
        self._bytes = 0
        self._version: object = None

    def _find(self, scope, now: datetime) -> Kept | None:
        if self._version != self.version():
            self._kept.clear()
            self._bytes = 0
            self._version = self.version()
        path, query = scope["path"], scope["query_string"]
        kept = self._kept.get((path, query, None))
        if kept is None:
            language = next((v for k, v in scope["headers"] if k == b"accept-language"), b"")
            kept = self._kept.get((path, query, language))
        return kept if kept is not None and now < kept.expires_at else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        now = self.clock()
        kept = self._find(scope, now)
        if kept is not None:
            await self._answer(scope, send, kept, now)
            return
        campaigns = self._version  # what this answer is made from (set by _find)
        keep: list = []  # (headers, max-age, varies by language), then the body's parts
        chunks: list[bytes] = []

        async def keeping(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                found = _keepable(headers) if message["status"] == 200 else None
                if found is not None:
                    keep.append((headers, *found))
            elif message["type"] == "http.response.body" and keep:
                chunks.append(message.get("body", b""))
                # Not kept if campaigns were reloaded while it was made: a request in between has emptied the
                # cache for the new ones already, and this answer may show a campaign taken down since.
                if not message.get("more_body", False) and self.version() == campaigns:
                    self._keep(scope, *keep[0], b"".join(chunks), now)
            await send(message)

        await self.app(scope, receive, keeping)

    def _keep(self, scope, headers: list, max_age: int, vary: bool, body: bytes, now: datetime) -> None:
        language = next((v for k, v in scope["headers"] if k == b"accept-language"), b"") if vary else None
        key = (scope["path"], scope["query_string"], language)
        kept = Kept(
            now + timedelta(seconds=max_age), 200,
            tuple((k, v) for k, v in headers if k.lower() not in (b"cache-control", b"content-length")), body,
            next((v for k, v in headers if k.lower() == b"etag"), None), _other_directives(headers))
        size = _size(key, kept)
        if size > self.MAX_BYTES // 8:
            return
        if key in self._kept:
            self._bytes -= _size(key, self._kept.pop(key))
        while self._kept and self._bytes + size > self.MAX_BYTES:
            oldest = next(iter(self._kept))
            self._bytes -= _size(oldest, self._kept.pop(oldest))  # the oldest first
        self._bytes += size
        self._kept[key] = kept

    async def _answer(self, scope, send, kept: Kept, now: datetime) -> None:
        age = int((kept.expires_at - now).total_seconds())
        headers = [*kept.headers, (b"cache-control", b"public, max-age=%d%s" % (age, kept.directives))]
        wanted = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if kept.etag is not None and wanted is not None and etag_matches(wanted.decode("latin-1"),
                                                                         kept.etag.decode("latin-1")):
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(len(kept.body)).encode()))
        await send({"type": "http.response.start", "status": kept.status, "headers": headers})
        await send({"type": "http.response.body", "body": kept.body})
