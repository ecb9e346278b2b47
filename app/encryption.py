"""Personal data at rest: AES-256-GCM under keys from CAMPAIGN_DATA_KEY, and the keyed hash that finds a
repeat signer without storing the address.

A stolen database file alone names nobody: every personal field is sealed, and the email index is an HMAC whose
key never touches the database. The first key of the ring seals; every key of the ring opens.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app import files
from app.settings import Settings

NONCE_BYTES = 12


class KeyError_(Exception):
    """A data key is missing or malformed."""


def new_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _decode(raw: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.strip().encode())
    except ValueError as exc:
        raise KeyError_("a data key is not valid urlsafe base64") from exc
    if len(key) != 32:
        raise KeyError_("a data key must be 32 bytes (44 characters of urlsafe base64)")
    return key


@dataclass(frozen=True)
class Keyring:
    """`spec` is "id:key,id:key" (or one bare key, id "k1"); the first key seals new data."""

    keys: dict[str, AESGCM]
    primary: str
    index_keys: tuple[bytes, ...]  # one per key, primary first

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        entries: list[tuple[str, bytes]] = []
        for i, part in enumerate(p for p in spec.split(",") if p.strip()):
            key_id, sep, raw = part.strip().partition(":")
            if not sep:
                key_id, raw = f"k{i + 1}", part
            if not key_id.isalnum() or len(key_id) > 16:
                raise KeyError_(f"data key id {key_id!r} must be 1-16 letters or digits")
            entries.append((key_id, _decode(raw)))
        if not entries:
            raise KeyError_("no data key given")
        index_keys = tuple(hmac.digest(key, b"campaign email index v1", "sha256") for _, key in entries)
        return cls({k: AESGCM(v) for k, v in entries}, entries[0][0], index_keys)

    def seal(self, plain: str | None, field: str) -> bytes | None:
        """Encrypt one field; the field name is bound in, so sealed values cannot be swapped between columns."""
        if plain is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.keys[self.primary].encrypt(nonce, plain.encode(), field.encode())

    def open(self, sealed: bytes | None, field: str, key_id: str) -> str | None:
        if sealed is None:
            return None
        aead = self.keys.get(key_id)
        if aead is None:
            raise KeyError_(f"data key {key_id!r} is not in CAMPAIGN_DATA_KEY")
        return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], field.encode()).decode()

    def seal_bytes(self, plain: bytes, field: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.keys[self.primary].encrypt(nonce, plain, field.encode())

    def opener(self, key_id: str) -> Callable[[bytes, bytes], bytes]:
        """open_bytes for many values under one key, as (sealed, field name as bytes) -> plain bytes: a bulk
        reader (an export) calls it a few million times, where the lookups of `open` cost more than the AES."""
        aead = self.keys.get(key_id)
        if aead is None:
            raise KeyError_(f"data key {key_id!r} is not in CAMPAIGN_DATA_KEY")
        decrypt = aead.decrypt

        def open_(sealed: bytes, field: bytes) -> bytes:
            return decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], field)

        return open_

    def open_bytes(self, sealed: bytes, field: str, key_id: str) -> bytes:
        return self.keys[key_id].decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], field.encode())

    def email_key(self, normalised_email: str) -> bytes:
        """The index value new rows get (under the primary key)."""
        return hmac.digest(self.index_keys[0], normalised_email.encode(), "sha256")

    def email_keys(self, normalised_email: str) -> list[bytes]:
        """Every index value the address may have: during a key rotation rows carry either key's value."""
        return [hmac.digest(k, normalised_email.encode(), "sha256") for k in self.index_keys]


def key_file(settings: Settings) -> Path:
    return settings.var_dir / "data.key"


def load_keyring(settings: Settings, *, create: bool = False) -> Keyring:
    """The ring from CAMPAIGN_DATA_KEY, else from var/data.key; `create` makes that file in development."""
    if settings.data_key:
        return Keyring.parse(settings.data_key)
    path = key_file(settings)
    if not path.exists():
        if not create or settings.env == "production":
            raise KeyError_(f"CAMPAIGN_DATA_KEY is not set and {path} does not exist")
        write_key_file(path, f"k1:{new_key()}")
    return Keyring.parse(path.read_text())


def write_key_file(path: Path, spec: str) -> None:
    """Replace the key file atomically, readable by its owner only."""
    files.write_private(path, spec + "\n")
