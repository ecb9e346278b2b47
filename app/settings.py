"""Configuration from `CAMPAIGN_*` environment variables, in one Settings object.

Everything (the app, the CLI, the outbox worker, tests) is built from a Settings passed in; nothing reads the
environment elsewhere. Outside development, default secrets are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
# An unconfirmed signature is deleted this long after its link expires (retention.py).
UNCONFIRMED_GRACE_DAYS = 7
DEV_SECRET = "dev-secret-change-me"  # noqa: S105 - refused outside development


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGN_", env_nested_delimiter="__", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    base_url: str = "http://127.0.0.1:8000"
    var_dir: Path = ROOT / "var"
    letters_dir: Path = ROOT / "templates" / "letters"
    database_url: str = ""  # empty: SQLite file var/campaign.db
    secret_key: str = DEV_SECRET
    # Key for personal data at rest: urlsafe base64 of 32 bytes, or "id:key,id:key" (first one encrypts).
    data_key: str = ""
    organiser_token: str = ""
    redis_url: str = ""
    smtp_url: str = ""  # smtp://user:pass@host:port ; smtps:// for implicit TLS; ?starttls=1
    mail_from: str = "campaign@localhost"
    mail_from_name: str = "Letters for Zhanbolat Mamay"
    discreet_mail_from: str = ""  # sender of discreet mail; default noreply@<domain of mail_from>
    # Bounces come back to <bounce_local>+<sealed row>@<domain of the From address> (VERP): that domain's mail
    # server must deliver bounces+anything@ to one mailbox, which `campaign bounces` reads. Empty: no VERP, the
    # envelope sender is the From address.
    bounce_local: str = Field(default="bounces", pattern=r"^[a-z0-9.-]{0,32}$")
    # DKIM: every mail is signed with this key for the domain of its From address (`campaign dkim-key` makes one,
    # `campaign dns` prints the records to publish). Both or neither.
    dkim_selector: str = Field(default="", pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")
    dkim_key_file: str = ""
    sign_rate_limit: str = "10/minute;100/day"
    login_rate_limit: str = "5/minute"
    min_cell: int = Field(default=5, ge=1)
    # Public figures move only at these boundaries (UTC, from the epoch), never per confirmation: see counters.py.
    public_refresh_minutes: float = Field(default=10, gt=0)
    retention_days: int = Field(default=180, ge=1)
    confirm_token_days: int = Field(default=7, ge=1)
    target_hourly_cap: int = Field(default=30, ge=1)
    outbox_in_process: bool = True
    # Where the sign path's batches are sealed and written: a child process per server process (so the event
    # loop never waits for the GIL behind them), or a thread of the server process itself.
    sign_writer: Literal["process", "thread"] = "process"
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    # How often a server looks for added, edited or removed campaign folders (0: only at start).
    campaign_reload_seconds: float = Field(default=2.0, ge=0)
    # Each mail made from a notice (confirmation, reminder, erase link) waits a random 0..N seconds before it is
    # due, drawn alone: whether a mail was made for an address must not show in when a prober's own mails arrive.
    mail_jitter_seconds: float = Field(default=60.0, ge=0)
    outbox_max_attempts: int = Field(default=12, ge=1)
    frame_ancestors: list[str] = []
    access_log: bool = False
    # Addresses of the proxies whose X-Forwarded-For is believed ("127.0.0.1", "10.0.0.5,10.0.0.6", or "*" where
    # only the proxy can reach the server). Empty: the client is the peer of the connection, and a forged
    # X-Forwarded-For from anyone (even a local process) cannot pose as another client to the rate limits.
    trusted_proxies: str = ""

    @field_validator("var_dir", "letters_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env == "production":
            if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
                raise ValueError("CAMPAIGN_SECRET_KEY must be set to 32+ random characters in production")
            if not self.data_key:
                raise ValueError("CAMPAIGN_DATA_KEY must be set in production")
            for name in ("mail_from", "discreet_mail_from"):
                if _unroutable(getattr(self, name)):
                    raise ValueError(f"CAMPAIGN_{name.upper()} must be an address on a domain you own in production "
                                     "(not localhost or a reserved domain: mail from it is refused or lands as spam)")
        if bool(self.dkim_selector) != bool(self.dkim_key_file):
            raise ValueError("set both CAMPAIGN_DKIM_SELECTOR and CAMPAIGN_DKIM_KEY_FILE, or neither")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'campaign.db'}"

    @property
    def mail_dir(self) -> Path:
        return self.var_dir / "mail"

    @property
    def unconfirmed_days(self) -> int:
        """How long an unconfirmed signature is kept after its last link or code was mailed (the mail says so)."""
        return self.confirm_token_days + UNCONFIRMED_GRACE_DAYS


def _unroutable(address: str) -> bool:
    """An address no real mail can come from: no domain, a single-label one (localhost), or a reserved one."""
    from app.campaigns import is_sample_address

    if not address:
        return False  # not set: the default (derived from mail_from) applies
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return "@" not in address or "." not in domain or is_sample_address(address)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests and the CLI pass these)."""
    return Settings(**overrides)
