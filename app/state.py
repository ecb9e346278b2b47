"""The objects one running app shares, built once from Settings: database, keys, campaigns, mail, limits.

Routes reach them with `services(request)`; nothing here is a module-level global, so tests build their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request

from app import campaigns as campaigns_mod
from app import letter_check, mail
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring, load_keyring
from app.intake import Committer, Intake, ThreadIntake
from app.intake_process import ProcessIntake
from app.ratelimit import Limiter
from app.settings import Settings
from app.stats_cache import StatsCache


@dataclass
class Services:
    settings: Settings
    db: Database
    keyring: Keyring
    campaigns: Mapping[str, Campaign]  # a campaigns.Registry, reloaded live (main.py polls it)
    composer: mail.Composer
    sign_limiter: Limiter
    login_limiter: Limiter
    # The sign path's group-commit writer; create_app's lifespan starts and stops it.
    intake: Intake = field(default=None)  # type: ignore[assignment]  # built from the fields above
    # The time public figures are published against (tests pass a clock they move).
    clock: Callable[[], datetime] = utcnow
    # The public figures of the current period, served from memory until the next boundary.
    stats_cache: StatsCache = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.intake is None:  # where the batches are signed: a child process, or a thread of this one
            self.intake = ProcessIntake(self.settings) if self.settings.sign_writer == "process" else ThreadIntake(
                Committer(self.db, keyring=self.keyring, settings=self.settings))
        if self.stats_cache is None:
            self.stats_cache = StatsCache(
                self.db, min_cell=self.settings.min_cell,
                every=timedelta(minutes=self.settings.public_refresh_minutes), clock=self.clock,
            )

    @classmethod
    def build(cls, settings: Settings, *, db: Database | None = None,
              clock: Callable[[], datetime] = utcnow) -> Services:
        return cls(
            settings=settings,
            db=db or Database(settings.sqlalchemy_url),
            keyring=load_keyring(settings, create=settings.env != "production"),
            campaigns=campaigns_mod.Registry(settings.letters_dir, check=letter_check.check_campaign),
            composer=mail.Composer(settings),
            sign_limiter=Limiter(settings.sign_rate_limit, secret=settings.secret_key, redis_url=settings.redis_url),
            login_limiter=Limiter(settings.login_rate_limit, secret=settings.secret_key, redis_url=settings.redis_url),
            clock=clock,
        )


def services(request: Request) -> Services:
    return request.app.state.services


# For routes that take the services as a dependency (a sync one costs a thread hop: hot routes call `services`).
ServicesDep = Annotated[Services, Depends(services)]
