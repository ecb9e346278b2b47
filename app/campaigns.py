"""Campaigns as data: every folder under templates/letters/ with a campaign.toml becomes a Campaign.

A second campaign is a new folder, no code. A wrong file fails loudly, naming the file and the field.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Literal

import pycountry
from jinja2 import BaseLoader, Environment, TemplateError, TemplateNotFound
from jinja2.loaders import split_template_path
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app import i18n

log = logging.getLogger(__name__)
COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
LANGUAGES = i18n.LANGUAGES
Disclosure = Literal["count", "country", "name", "name_city"]
DISCLOSURE_ORDER = ("count", "country", "name", "name_city")
# How a target can be reached: e-mail and post are offered to signers; a `pack` target (no address of its own
# that we could confirm) is reached only by the organisation's appeal pack, delivered by the organisation.
Channel = Literal["email", "post", "pack"]
Phase = Literal["draft", "upcoming", "open", "closed"]
FILE_MAX = 1024 * 1024  # a campaign.toml or letter template larger than this is refused, never read whole
# Domains that can never be a real organisation's (RFC 2606, RFC 6761): a campaign with such an organisation is a
# sample, whose packs and letters say so and which `campaign check` refuses in production.
SAMPLE_DOMAINS = ("example.org", "example.com", "example.net", "localhost")
SAMPLE_SUFFIXES = (".example", ".invalid", ".test", ".localhost")


class CampaignError(Exception):
    """A campaign file is missing or wrong; the message names the file and the field."""


class CampaignFileTooLarge(TemplateError):
    """A campaign file over FILE_MAX (a template error too, so `campaign check` names it)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Text = dict[str, str]


def is_sample_address(address: str) -> bool:
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return domain in SAMPLE_DOMAINS or domain.endswith(SAMPLE_SUFFIXES)


class Representative(_Strict):
    """Who signs the organisation's appeal: name and position, in each of the campaign's languages."""

    name: Text
    title: Text


class Organisation(_Strict):
    """The named applicant of the appeal pack: Kazakh law (APC Art. 63) sets anonymous appeals aside, and an
    appeal names its applicant with a postal address and is signed. Also the controller the privacy notice names."""

    name: Text
    address: str  # postal address, as on an envelope
    email: str
    website: str | None = None
    registration: str | None = None  # registration number and register, if any
    representative: Representative
    privacy_contact: str  # where data-protection requests go (an e-mail address)

    @property
    def is_sample(self) -> bool:
        return is_sample_address(self.email) or is_sample_address(self.privacy_contact)


class Sender(_Strict):
    """Who the campaign's mail comes from. `address` empty: CAMPAIGN_MAIL_FROM."""

    name: Text
    address: str | None = None


class Appeal(_Strict):
    """The organisation's own words to an official in the appeal pack (never the text written for supporters)."""

    subject: Text
    body: Text  # the cover letter's paragraphs, blank-line separated
    closing: Text


class Target(_Strict):
    key: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    kind: Literal["authority", "embassy"]
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    name: Text
    title: Text
    address: str | None = None
    email: str | None = None
    salutation: Text
    # The address block's first lines in a language whose official letters open with the title in the dative
    # (ru "Президенту Республики Казахстан / Токаеву К.-Ж. К."), one line per line; absent: name, then title.
    addressee: Text = {}
    disclosure: Disclosure | None = None
    channels: tuple[Channel, ...] = ()  # empty: e-mail if it has one, post if it has an address, else pack
    appeal_lang: str | None = None  # the language of the pack to this target (default: the campaign's first)
    verified_on: date | None = None  # when its name, office and addresses were last checked
    source: str | None = None

    @model_validator(mode="after")
    def _embassy_country(self) -> Target:
        if self.kind == "embassy" and not self.country:
            raise ValueError("an embassy needs `country` (ISO alpha-2 of where it is)")
        if self.country and self.country not in COUNTRIES:
            hint = " (the United Kingdom is GB)" if self.country == "UK" else ""
            raise ValueError(f"country {self.country!r} is not an ISO 3166-1 alpha-2 code{hint}: signers choose "
                             "from that list, so no signer would ever be offered this target")
        if "email" in self.channels and not self.email:
            raise ValueError("channel `email` needs `email`")
        if "post" in self.channels and not self.address:
            raise ValueError("channel `post` needs `address`")
        return self

    @property
    def reach(self) -> tuple[Channel, ...]:
        """The channels this target has (stated, or read from its details)."""
        if self.channels:
            return self.channels
        found: tuple[Channel, ...] = (("email",) if self.email else ()) + (("post",) if self.address else ())
        return found or ("pack",)

    def writes_from(self, country: str) -> bool:
        """An embassy is written to by the signers who live in its country; an authority by every signer."""
        return self.kind != "embassy" or self.country == country

    @property
    def offered_to_signers(self) -> bool:
        """A signer can send, post or mail their own letter to it; a pack-only target is the organisation's."""
        return "email" in self.reach or "post" in self.reach

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
    draft: bool = False  # seen by organisers only (their preview), takes no signatures, listed nowhere
    languages: tuple[str, ...]
    goal: int = Field(gt=0)
    opens_on: date
    closes_on: date | None = None
    title: Text
    summary: Text
    case: Text
    asks: dict[str, list[str]]  # to the authorities
    embassy_asks: dict[str, list[str]] = {}  # to embassies, which can convey and raise but not quash
    subject: Text
    openings: dict[str, list[str]]
    closings: dict[str, list[str]]
    signoff: Text
    targets: tuple[Target, ...]
    sender: Sender | None = None
    organisation: Organisation | None = None
    appeal: Appeal | None = None
    # Where this campaign's pages are served when it has a domain of its own (mailed links, og:url); None:
    # CAMPAIGN_BASE_URL.
    base_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
    folder: Path = Path()
    revision: str = ""  # fingerprint of the folder when loaded: letter templates are compiled per revision

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lang for lang in value if lang not in LANGUAGES]
        if unknown or not value:
            raise ValueError(f"languages must be a non-empty subset of {list(LANGUAGES)}, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _every_language_everywhere(self) -> Campaign:
        """Every problem at once (one ValueError listing them all), so a file is fixed in one pass."""
        problems: list[str] = []
        texts = ("title", "summary", "case", "asks", "subject", "openings", "closings", "signoff")
        for field in texts:
            for lang in self.languages:
                if not getattr(self, field).get(lang):
                    problems.append(f"{field}.{lang} is missing or empty")
        for i, target in enumerate(self.targets):
            for field in ("name", "title", "salutation"):
                for lang in self.languages:
                    if not getattr(target, field).get(lang):
                        problems.append(f"targets[{i}] ({target.key}).{field}.{lang} is missing or empty")
        if any(t.kind == "embassy" for t in self.targets):
            for lang in self.languages:
                if not self.embassy_asks.get(lang):
                    problems.append(f"embassy_asks.{lang} is missing or empty (the campaign writes to an embassy)")
        if self.sender:
            for lang in self.languages:
                if not self.sender.name.get(lang):
                    problems.append(f"sender.name.{lang} is missing or empty")
        if any(t.kind == "authority" for t in self.targets):
            if self.organisation is None:
                authorities = ", ".join(t.key for t in self.targets if t.kind == "authority")
                problems.append(
                    f"organisation: missing. This campaign writes to authorities ({authorities}), and Kazakh law "
                    "sets anonymous appeals aside (APC Art. 63): add an [organisation] table (name, postal address, "
                    "email, representative, privacy_contact) naming who applies for the signers")
            if self.appeal is None:
                problems.append("appeal: a campaign that writes to authorities needs the pack's cover letter")
        for lang in sorted({t.appeal_lang or self.languages[0] for t in self.targets}):
            if lang not in self.languages:
                problems.append(f"appeal_lang {lang!r} is not one of the campaign's languages")
                continue
            for part in ("subject", "body", "closing"):
                if self.appeal and not getattr(self.appeal, part).get(lang):
                    problems.append(f"appeal.{part}.{lang} is missing or empty")
            if self.organisation:
                if not self.organisation.name.get(lang):
                    problems.append(f"organisation.name.{lang} is missing or empty")
                for part in ("name", "title"):
                    if not getattr(self.organisation.representative, part).get(lang):
                        problems.append(f"organisation.representative.{part}.{lang} is missing or empty")
        keys = [t.key for t in self.targets]
        if len(set(keys)) != len(keys):
            problems.append("targets: two targets share a key")
        if self.closes_on and self.closes_on < self.opens_on:
            problems.append("closes_on is before opens_on")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def phase(self, today: date) -> Phase:
        """draft (organisers only), upcoming (before opens_on), open, or closed (after closes_on)."""
        if self.draft:
            return "draft"
        if today < self.opens_on:
            return "upcoming"
        return "closed" if self.closes_on is not None and today > self.closes_on else "open"

    def is_open(self, today: date) -> bool:
        return self.phase(today) == "open"

    def is_public(self, today: date) -> bool:
        """Listed on the home page and the API: open or closed (a draft or a campaign not open yet is not)."""
        return self.phase(today) in ("open", "closed")

    def asks_for(self, target: Target, lang: str) -> list[str]:
        """What a letter to `target` asks: an embassy conveys and raises; the authorities can act."""
        if target.kind == "embassy" and self.embassy_asks:
            return list(self.embassy_asks[lang])
        return list(self.asks[lang])

    def appeal_lang(self, target: Target) -> str:
        return target.appeal_lang or self.languages[0]

    def target(self, key: str) -> Target | None:
        return next((t for t in self.targets if t.key == key), None)

    def links_base(self, default: str) -> str:
        """The start of every link to this campaign's pages: its own base URL, else the service's."""
        return (self.base_url or default).rstrip("/")

    def lang(self, wanted: str) -> str:
        return wanted if wanted in self.languages else self.languages[0]


class FolderLoader(BaseLoader):
    """Letter templates from one campaign folder and nothing outside it: a folder is edited live, and a symlink in
    it that a template includes (to /proc/self/environ, holding the keys, or any file the server may read) would
    otherwise be rendered into the public letter preview. Files over FILE_MAX are refused unread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        root = self.folder.resolve()
        path = root.joinpath(*split_template_path(template)).resolve()  # the file itself, symlinks followed
        if not path.is_relative_to(root) or not path.is_file():
            raise TemplateNotFound(template, f"{template}: no such file in the campaign folder {root} (a link "
                                             "to a file outside it is not followed)")
        return _read_bounded(path).decode("utf-8"), str(path), lambda: True


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(FILE_MAX + 1)
    if len(data) > FILE_MAX:
        raise CampaignFileTooLarge(f"{path.name} is larger than {FILE_MAX // 1024 // 1024} MB")
    return data


def load_campaign(path: Path) -> Campaign:
    try:
        data = tomllib.loads(_read_bounded(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, CampaignFileTooLarge) as exc:
        raise CampaignError(f"{path}: {exc}") from exc
    try:
        campaign = Campaign(**data, folder=path.parent, revision=fingerprint(path.parent))
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            # The whole-campaign check lists every problem it found, "; "-separated: one line each.
            problems += [f"{where}: {message}"] if where else message.split("; ")
        raise CampaignError("\n".join(f"{path}: {problem}" for problem in problems)) from exc
    if campaign.slug != path.parent.name:
        raise CampaignError(f"{path}: slug: {campaign.slug!r} must equal the folder name {path.parent.name!r}")
    return campaign


def load_campaigns(letters_dir: Path) -> dict[str, Campaign]:
    """Every campaign under `letters_dir`, by slug, in folder order."""
    if not letters_dir.is_dir():
        raise CampaignError(f"{letters_dir}: campaign folder not found")
    files = sorted(letters_dir.glob("*/campaign.toml"))
    return {c.slug: c for c in map(load_campaign, files)}


def fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a campaign folder's files: changes when any file is edited."""
    found = hashlib.sha256()
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        try:
            stat = path.stat()
        except OSError:
            continue
        found.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return found.hexdigest()[:16]


Checker = Callable[[Campaign], list[str]]


class Registry(Mapping[str, Campaign]):
    """The campaigns a server serves, each loaded on its own and reloaded when its folder changes.

    A broken campaign (its file, or a letter `check` finds wrong) is left out with its error in `problems` while
    the others serve; a broken edit of a campaign that was serving keeps its last good version. Each reload swaps
    in a new dict at once, so a request sees one consistent set."""

    def __init__(self, letters_dir: Path, *, check: Checker | None = None) -> None:
        if not letters_dir.is_dir():
            raise CampaignError(f"{letters_dir}: campaign folder not found")
        self.letters_dir, self.check = letters_dir, check
        self._current: dict[str, Campaign] = {}
        self.problems: dict[str, str] = {}  # folder name -> what is wrong with it
        self._seen: dict[str, str] = {}  # folder name -> fingerprint last loaded (good or bad)
        self._lock = threading.Lock()
        self.version = 0  # counts reloads that changed something (cached pages key on it)
        self.reload()

    def __getitem__(self, slug: str) -> Campaign:
        return self._current[slug]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current)

    def __len__(self) -> int:
        return len(self._current)

    def reload(self) -> bool:
        """Load every folder whose files changed since the last look; True if anything changed."""
        with self._lock:
            folders = {p.parent.name: p.parent for p in sorted(self.letters_dir.glob("*/campaign.toml"))}
            stamps = {name: fingerprint(folder) for name, folder in folders.items()}
            if stamps == self._seen:
                return False
            current = {slug: c for slug, c in self._current.items() if slug in folders}
            problems = {name: problem for name, problem in self.problems.items() if name in folders}
            for name, folder in folders.items():
                if self._seen.get(name) == stamps[name]:
                    continue
                try:
                    campaign = load_campaign(folder / "campaign.toml")
                    found = self.check(campaign) if self.check else []
                    if found:
                        raise CampaignError("; ".join(found))
                except CampaignError as exc:
                    problems[name] = str(exc)
                    kept = " (its last good version keeps serving)" if name in current else ""
                    log.error("campaign %s is not served as it is now%s: %s", name, kept, exc)
                    continue
                problems.pop(name, None)
                if name in self._seen:
                    log.info("campaign %s reloaded", name)
                current[name] = campaign
            self._current = dict(sorted(current.items()))
            self.problems, self._seen = problems, stamps
            self.version += 1
            return True
