"""Tokens, confirmation codes, CSRF and security headers.

Tokens are random and stored only as hashes; codes are compared in constant time; every private form carries a
CSRF token bound to a cookie, and the public sign form (on a page cached for everyone) is taken only from our own
origin; every response forbids loading anything from another origin.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No 0/O, 1/I/L, 5/S, 2/Z, 8/B: a code read aloud or from a phone screen is typed right the first time.
CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY34679"
CODE_LENGTH = 8
CSRF_COOKIE = "csrf"
CSRF_FIELD = "csrf_token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


@functools.lru_cache(maxsize=8)
def _row_cipher(server_secret: str) -> Cipher:
    return Cipher(algorithms.AES(hmac.digest(server_secret.encode(), b"row number v1", "sha256")), modes.ECB())  # noqa: S305


def row_token(server_secret: str, row_id: int, secret: str) -> str:
    """A link token that names its row: the row is found by primary key and the secret checked against its hash
    in constant time, so no index over random hashes is paid for on every insert. The row number is encrypted
    (one AES block, with eight zero bytes that a forged number fails): consecutive rows must not show, or a
    signer's own link would tell how many signed since, and whether an address signed in between."""
    block = row_id.to_bytes(8, "big") + bytes(8)
    encryptor = _row_cipher(server_secret).encryptor()
    named = base64.urlsafe_b64encode(encryptor.update(block) + encryptor.finalize()).rstrip(b"=").decode()
    return f"{named}.{secret}"


def split_row_token(server_secret: str, token: str) -> tuple[int, str] | None:
    named, dot, secret = token.partition(".")
    if not dot or not secret or len(named) != 22:
        return None
    try:
        block = base64.urlsafe_b64decode(named + "==")
    except (binascii.Error, ValueError):
        return None
    if len(block) != 16:
        return None
    decryptor = _row_cipher(server_secret).decryptor()
    plain = decryptor.update(block) + decryptor.finalize()
    if plain[8:] != bytes(8):
        return None
    return int.from_bytes(plain[:8], "big"), secret


def token_hash(token: str) -> bytes:
    """Tokens carry 256 random bits, so a plain SHA-256 makes a stolen hash useless."""
    return hashlib.sha256(token.encode()).digest()


def new_code() -> str:
    # One draw for the whole code, spelled in base len(CODE_ALPHABET): uniform, like a draw per character.
    n, base = secrets.randbelow(len(CODE_ALPHABET) ** CODE_LENGTH), len(CODE_ALPHABET)
    digits = []
    for _ in range(CODE_LENGTH):
        n, digit = divmod(n, base)
        digits.append(CODE_ALPHABET[digit])
    return "".join(digits)


def normalise_code(typed: str) -> str:
    return "".join(ch for ch in typed.upper() if ch.isalnum())


def code_hash(secret: str, code: str) -> bytes:
    """Keyed, because a code has only ~37 bits: without the server secret a stolen hash cannot be brute-forced."""
    return hmac.digest(secret.encode(), b"code:" + normalise_code(code).encode(), "sha256")


def same(a: bytes | None, b: bytes | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a, b)


CLOCK_SKEW = 30  # seconds


@functools.lru_cache(maxsize=8)
def _handle_aead(secret: str) -> AESGCM:
    return AESGCM(hmac.digest(secret.encode(), b"sealed handle v1", "sha256"))


def seal_handle(secret: str, purpose: str, payload: bytes, *, now: float | None = None) -> str:
    """An opaque, random-looking value for a cookie: `payload` and the time, encrypted and authenticated under a
    key derived from the server secret (a fresh nonce each time, so two handles of one payload look unrelated)."""
    nonce = os.urandom(12)
    plain = struct.pack(">Q", int(time.time() if now is None else now)) + payload
    sealed = nonce + _handle_aead(secret).encrypt(nonce, plain, purpose.encode())
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def open_handle(secret: str, purpose: str, value: str | None, *, max_age: float, now: float | None = None
                ) -> bytes | None:
    """The payload of a handle sealed for `purpose` less than `max_age` seconds ago; else None."""
    if not value or len(value) > 1000:
        return None
    try:
        sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        plain = _handle_aead(secret).decrypt(sealed[:12], sealed[12:], purpose.encode())
    except (binascii.Error, ValueError, InvalidTag):
        return None
    (issued,) = struct.unpack(">Q", plain[:8])
    age = (time.time() if now is None else now) - issued
    # A little from the future is another host's clock running ahead (tokens are made on one, opened on another).
    return plain[8:] if -CLOCK_SKEW <= age <= max_age else None


def same_origin(headers: Mapping[str, str], *, base_url: str) -> bool:
    """Whether a form post may be taken without a CSRF token: the check of Go 1.25's http.CrossOriginProtection.
    A browser that sends Sec-Fetch-Site says where the request came from (only same-origin, or none: typed or
    bookmarked, passes); an older one sends Origin, which must be this site: base_url, or the Host asked for
    with base_url's scheme (over TLS the certificate vouches for that Host; over plain HTTP a name the attacker
    points at our address, DNS rebinding, would send its own Host and Origin alike). A request with neither is
    not from a browser, so no other site's page can have made it."""
    site = headers.get("sec-fetch-site")
    if site:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    netloc = parts.netloc.lower()
    if not netloc:  # "null": a sandboxed or opaque origin
        return False
    host = headers.get("host", "").lower()
    own = urlsplit(base_url)
    return parts.scheme.lower() == own.scheme.lower() and netloc in (host, own.netloc.lower())


def csrf_form_token(secret: str, cookie: str) -> str:
    return hmac.new(secret.encode(), b"csrf:" + cookie.encode(), "sha256").hexdigest()


def csrf_valid(secret: str, cookie: str | None, field: str | None) -> bool:
    if not cookie or not field:
        return False
    return hmac.compare_digest(csrf_form_token(secret, cookie), field)


def content_security_policy(frame_ancestors: str = "'none'") -> str:
    return (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors {frame_ancestors}"
    )


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot sign path).

    A route that may be framed (the embed) sets its own Content-Security-Policy; it is kept. Whatever a route
    says, an answer that sets a cookie or answers a POST is `no-store`.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts
        self.csp = content_security_policy()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = self.csp
                    headers["X-Frame-Options"] = "DENY"
                if "set-cookie" in headers or scope["method"] not in ("GET", "HEAD"):
                    # A cookie is one visitor's, a form's answer is one sender's: never kept by any cache.
                    headers["Cache-Control"] = "no-store"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers["Cross-Origin-Resource-Policy"] = "same-origin"
                headers["Permissions-Policy"] = "interest-cohort=(), browsing-topics=()"
                if self.hsts:
                    headers["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)
