"""Campaigns as data: every folder under templates/letters/ with a campaign.toml becomes a Campaign.

A second campaign is a new folder, no code. A wrong file fails loudly, naming the file and the field.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app import i18n

LANGUAGES = i18n.LANGUAGES
Disclosure = Literal["count", "country", "name", "name_city"]
DISCLOSURE_ORDER = ("count", "country", "name", "name_city")


class CampaignError(Exception):
    """A campaign file is missing or wrong; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Text = dict[str, str]


class Target(_Strict):
    key: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    kind: Literal["authority", "embassy"]
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    name: Text
    title: Text
    address: str | None = None
    email: str | None = None
    salutation: Text
    disclosure: Disclosure | None = None
    verified_on: date | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _embassy_country(self) -> Target:
        if self.kind == "embassy" and not self.country:
            raise ValueError("an embassy needs `country` (ISO alpha-2 of where it is)")
        return self

    @property
    def disclosure_level(self) -> Disclosure:
        """Authorities of the country concerned see the total only; embassies abroad see per-country totals."""
        if self.disclosure:
            return self.disclosure
        return "count" if self.kind == "authority" else "country"

    def allows_names(self) -> bool:
        return DISCLOSURE_ORDER.index(self.disclosure_level) >= DISCLOSURE_ORDER.index("name")


class Campaign(_Strict):
    slug: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    languages: tuple[str, ...]
    goal: int = Field(gt=0)
    opens_on: date
    closes_on: date | None = None
    title: Text
    summary: Text
    case: Text
    asks: dict[str, list[str]]
    subject: Text
    openings: dict[str, list[str]]
    closings: dict[str, list[str]]
    signoff: Text
    targets: tuple[Target, ...]
    folder: Path = Path()

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lang for lang in value if lang not in LANGUAGES]
        if unknown or not value:
            raise ValueError(f"languages must be a non-empty subset of {list(LANGUAGES)}, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _every_language_everywhere(self) -> Campaign:
        texts = ("title", "summary", "case", "asks", "subject", "openings", "closings", "signoff")
        for field in texts:
            for lang in self.languages:
                if not getattr(self, field).get(lang):
                    raise ValueError(f"{field}.{lang} is missing or empty")
        for i, target in enumerate(self.targets):
            for field in ("name", "title", "salutation"):
                for lang in self.languages:
                    if not getattr(target, field).get(lang):
                        raise ValueError(f"targets[{i}] ({target.key}).{field}.{lang} is missing or empty")
        keys = [t.key for t in self.targets]
        if len(set(keys)) != len(keys):
            raise ValueError("targets: two targets share a key")
        if self.closes_on and self.closes_on < self.opens_on:
            raise ValueError("closes_on is before opens_on")
        return self

    def is_open(self, today: date) -> bool:
        return self.opens_on <= today and (self.closes_on is None or today <= self.closes_on)

    def target(self, key: str) -> Target | None:
        return next((t for t in self.targets if t.key == key), None)

    def lang(self, wanted: str) -> str:
        return wanted if wanted in self.languages else self.languages[0]


def load_campaign(path: Path) -> Campaign:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CampaignError(f"{path}: {exc}") from exc
    try:
        campaign = Campaign(**data, folder=path.parent)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise CampaignError(f"{path}: {problems}") from exc
    if campaign.slug != path.parent.name:
        raise CampaignError(f"{path}: slug: {campaign.slug!r} must equal the folder name {path.parent.name!r}")
    return campaign


def load_campaigns(letters_dir: Path) -> dict[str, Campaign]:
    """Every campaign under `letters_dir`, by slug, in folder order."""
    if not letters_dir.is_dir():
        raise CampaignError(f"{letters_dir}: campaign folder not found")
    files = sorted(letters_dir.glob("*/campaign.toml"))
    return {c.slug: c for c in map(load_campaign, files)}
