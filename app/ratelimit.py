"""Rate limits (the `limits` library), in memory or in Redis, keyed on a hash of the client address.

The address itself is never stored: the key is an HMAC under a random key that changes every UTC day and lives
only in process memory or in Redis (with an expiry), never in the database or a log.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from datetime import UTC, datetime

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


class DailyKey:
    """Today's hashing key: shared through Redis when there is one, so every worker hashes alike."""

    def __init__(self, redis_url: str = "") -> None:
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url)
        self._lock = threading.Lock()
        self._day = ""
        self._key = b""

    def get(self) -> bytes:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        with self._lock:
            if day != self._day:
                self._key = self._fetch(day)
                self._day = day
            return self._key

    def _fetch(self, day: str) -> bytes:
        if self._redis is None:
            return secrets.token_bytes(32)
        name = f"campaign:ratelimit-key:{day}"
        self._redis.set(name, secrets.token_bytes(32), nx=True, ex=2 * 86400)
        return bytes(self._redis.get(name))


class Limiter:
    """`hit(scope, client)` -> seconds to wait (0 when allowed)."""

    def __init__(self, spec: str, *, redis_url: str = "") -> None:
        self.enabled = spec.strip().lower() not in {"", "off", "none", "0"}
        self.limits = parse_many(spec) if self.enabled else []
        storage = storage_from_string(redis_url if redis_url else "memory://")
        self.limiter = MovingWindowRateLimiter(storage)
        self.daily_key = DailyKey(redis_url)

    def client_key(self, client: str) -> str:
        return hmac.new(self.daily_key.get(), client.encode(), "sha256").hexdigest()[:32]

    def hit(self, scope: str, client: str) -> int:
        if not self.enabled:
            return 0
        key = self.client_key(client)
        for limit in self.limits:
            if not self.limiter.hit(limit, scope, key):
                reset_at, _ = self.limiter.get_window_stats(limit, scope, key)
                return max(1, int(reset_at - time.time()) + 1)
        return 0
