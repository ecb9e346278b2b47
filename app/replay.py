"""Single-use records: a random nonce (from a sealed form token) is accepted once until it expires.

Kept in Redis when one is configured, so every worker and host agrees; else in this process's memory (then
`campaign serve` refuses more than one worker). A nonce is random and names no one: nothing personal is kept.
"""

from __future__ import annotations

import threading
import time

MEMORY_LIMIT = 1_000_000  # entries; past it, expired ones are dropped (and, if none are, the oldest)


class UsedOnce:
    """`first_use(nonce, ttl)` is True the first time a nonce is seen within `ttl` seconds, False after."""

    def __init__(self, redis_url: str = "", *, prefix: str = "campaign:used") -> None:
        self._prefix = prefix
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url)
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # nonce -> expires at (monotonic), in insertion order

    def first_use(self, nonce: str, ttl: int) -> bool:
        if self._redis is not None:
            return bool(self._redis.set(f"{self._prefix}:{nonce}", b"1", nx=True, ex=ttl))
        now = time.monotonic()
        with self._lock:
            expires = self._seen.get(nonce)
            if expires is not None and expires > now:
                return False
            if len(self._seen) >= MEMORY_LIMIT:
                self._prune(now)
            self._seen[nonce] = now + ttl
            return True

    def _prune(self, now: float) -> None:
        self._seen = {n: t for n, t in self._seen.items() if t > now}
        while len(self._seen) >= MEMORY_LIMIT:  # all still live: forget the oldest (their tokens expire first)
            del self._seen[next(iter(self._seen))]
