"""Rate limits (the `limits` library), in memory or in Redis, keyed on a hash of the client's network.

One client is one IPv4 address or one IPv6 /64 (what one household or one server is given), so an attacker
cannot get a fresh budget from every address of their prefix. The address itself is never stored: the key is
an HMAC under a daily key derived from CAMPAIGN_SECRET_KEY and the UTC date. That key lives only in process
memory, never in Redis, the database or a log, so what Redis holds cannot be turned back into addresses.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from datetime import UTC, datetime

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

KEY_LABEL = b"ratelimit v2"


def client_network(host: str) -> str:
    """The unit a limit counts: an IPv4 address, or the /64 of an IPv6 one (IPv4-mapped ones as IPv4)."""
    if ":" not in host:
        return host  # IPv4 or "unknown": the hot path does no parsing
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])  # a zone id (fe80::1%eth0) names no other client
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def daily_key(secret: str, day: str) -> bytes:
    """HMAC(secret, label + date): every worker and host derives the same key without sharing it anywhere."""
    return hmac.digest(secret.encode(), KEY_LABEL + day.encode(), "sha256")


class DailyKey:
    """Today's hashing key, derived again when the UTC day changes."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._lock = threading.Lock()
        self._day = -1
        self._key = b""

    def get(self) -> bytes:
        day = int(time.time() // 86400)
        if day != self._day:
            with self._lock:
                date = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
                self._key = daily_key(self._secret, date)
                self._day = day
        return self._key


class RateLimited(Exception):
    """Over a limit: try again in `retry_after` seconds (main.py answers 429 with Retry-After)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class Limiter:
    """`hit(scope, client)` -> seconds to wait (0 when allowed); `check` raises RateLimited instead."""

    def __init__(self, spec: str, *, secret: str, redis_url: str = "") -> None:
        self.enabled = spec.strip().lower() not in {"", "off", "none", "0"}
        self.limits = parse_many(spec) if self.enabled else []
        storage = storage_from_string(redis_url if redis_url else "memory://")
        # Fixed windows: Redis (or memory) holds a counter per window, never the time of each request, which
        # beside a seized secret key could be matched to the times of signatures.
        self.limiter = FixedWindowRateLimiter(storage)
        self.daily_key = DailyKey(secret)

    def client_key(self, client: str) -> str:
        return hmac.new(self.daily_key.get(), client_network(client).encode(), "sha256").hexdigest()[:32]

    def hit(self, scope: str, client: str) -> int:
        if not self.enabled:
            return 0
        key = self.client_key(client)
        for limit in self.limits:
            if not self.limiter.hit(limit, scope, key):
                reset_at, _ = self.limiter.get_window_stats(limit, scope, key)
                return max(1, int(reset_at - time.time()) + 1)
        return 0

    def check(self, scope: str, client: str) -> None:
        if retry_after := self.hit(scope, client):
            raise RateLimited(retry_after)
