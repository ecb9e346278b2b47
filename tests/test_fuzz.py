"""Hostile input, generated: schemathesis over /openapi.json (every operation, organiser ones with a real token)
and Hypothesis over the sign service with arbitrary Unicode (control characters, NUL, bidi overrides, lone
surrogates, very long strings).

The rule: an answer is never a 5xx and always matches the schema; a signature is either refused (422) with
nothing stored, or stored exactly as typed, apart from the documented trimming of surrounding whitespace (and
CRLF -> LF in the message).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from sqlalchemy import select

from app import addresses, organisers, signing
from app.db import Database, utcnow
from app.main import create_app
from app.models import CONFIRMED, PENDING, Signature
from app.state import Services
from tests.seed import add_signatures, signature_values
from tests.servers import record_figures
from tests.support import SIGNER, counts, make_settings, migrate

# --- schemathesis -----------------------------------------------------------------------------------------

# The schema is read from an app built like any other; the calls go to a second app on a migrated database.
_schema_dir = Path(tempfile.mkdtemp(prefix="fuzz-schema-"))
FUZZ_CONFIG = SchemathesisConfig.from_dict({"generation": {"max-examples": 50}, "seed": 7})
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(make_settings(_schema_dir, f"sqlite:///{_schema_dir / 'unused.db'}")),
    config=FUZZ_CONFIG,
)
CASES: dict[str, int] = {}
# Starlette answers OPTIONS/TRACE on a path served by two routes (GET and POST in different routers) with the
# Allow header of one route only. Nothing relies on Allow; every other check (status codes, schemas, content
# types, headers, auth) runs.
EXCLUDED_CHECKS = [schemathesis.checks.allow_header_conformance]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    """The app on a migrated database with a few signatures, and an organiser's Bearer header."""
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'fuzz.db'}"
    migrate(url)
    s = make_settings(tmp, url)
    db = Database(s.sqlalchemy_url)
    app = create_app(s, db=db)
    svc: Services = app.state.services
    with svc.db.write.begin() as session:
        _, token = organisers.add(session, name="fuzzer", now=utcnow())
        add_signatures(session, [
            signature_values(svc.keyring, name=f"Seed {i}", email=f"seed{i}@example.org", city="=1+1",
                             created_at=utcnow(), status=status)
            for i, status in enumerate([CONFIRMED, CONFIRMED, PENDING])
        ])
    yield app, {"Authorization": f"Bearer {token}"}
    total = sum(CASES.values())
    if total:
        record_figures("schemathesis", cases=total, operations=len(CASES), per_operation=CASES)
    db.dispose()


@schema.parametrize()
def test_every_api_operation_answers_without_5xx_and_as_its_schema_says(case, fuzz_target):
    app, organiser = fuzz_target
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    # Operations that declare a security scheme get a valid token (schemathesis also tries them without one).
    headers = organiser if case.operation.definition.raw.get("security") else {}
    case.call_and_validate(app=app, headers=headers, excluded_checks=EXCLUDED_CHECKS)


# --- Hypothesis on the sign service ----------------------------------------------------------------------

HOSTILE = [
    "\x00", "\x07", "\x1b[31m", "\r", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
    "\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200b", "\u200d", "\ufeff", "\ufffd",
    "\ud800", "\udfff", "\U0001f600", "\u0301", " ", "\u00a0", "\u3000", "<script>", "{{ 7*7 }}", "'; --", "=1+1",
    "Жанболат", "Қазақ", "ǅ", "ﬀ", "İ",
]
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40),  # surrogates included
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=5), max_size=12).map("".join),
    st.text(min_size=90, max_size=3000),
)
_serial = itertools.count()


@pytest.fixture(scope="module")
def sign_client(tmp_path_factory) -> Iterator[tuple[TestClient, Services]]:
    tmp = tmp_path_factory.mktemp("hyp")
    url = f"sqlite:///{tmp / 'hyp.db'}"
    migrate(url)
    s = make_settings(tmp, url)
    db = Database(s.sqlalchemy_url)
    app = create_app(s, db=db)
    with TestClient(app, base_url="http://testserver") as client:
        yield client, app.state.services
    db.dispose()


def stored(svc: Services, email: str) -> Signature:
    with svc.db.read() as s:
        key = svc.keyring.email_key(addresses.normalise_email(email))
        return s.scalar(select(Signature).where(Signature.email_key == key))


def opened(svc: Services, row: Signature, field: str) -> str:
    return svc.keyring.open(getattr(row, f"{field}_enc"), field, row.key_id) or ""


def check_refused_or_stored_as_typed(svc: Services, answer, before: tuple[int, int], typed: dict) -> None:
    after = counts(svc)
    assert answer.status_code in (202, 303, 422), (answer.status_code, answer.text[:500])
    if answer.status_code == 422:
        assert after == before, "a refused signature left something behind"
        return
    assert after == (before[0] + 1, before[1] + 1), "an accepted signature must add one row and one mail"
    row = stored(svc, typed["email"])
    assert row is not None
    assert opened(svc, row, "name") == typed["name"].strip()
    assert opened(svc, row, "city") == typed["city"].strip()
    assert opened(svc, row, "message") == typed["message"].replace("\r\n", "\n").strip()
    assert row.country == typed["country"].strip().upper()


def post_json(client: TestClient, payload: dict):
    """JSON as any client may send it: escaped, so that lone surrogates (\\ud800) reach the server too."""
    return client.post("/api/v1/campaigns/mamay/signatures", content=json.dumps(payload, ensure_ascii=True),
                       headers={"Content-Type": "application/json"})


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(name=hostile_text, city=hostile_text, message=hostile_text,
       country=st.sampled_from(["DE", "kz", " ru ", "XX", "", "\x00", "\u202eDE"]))
def test_api_sign_with_any_unicode_is_refused_with_nothing_stored_or_stored_exactly(
    sign_client, name, city, message, country
):
    client, svc = sign_client
    typed = {"name": name, "city": city, "message": message, "country": country,
             "email": f"fuzz{next(_serial)}@example.org"}
    before = counts(svc)
    answer = post_json(client, {**SIGNER, **typed, "consent": True})
    check_refused_or_stored_as_typed(svc, answer, before, typed)


def as_browser_sends(value: str) -> str:
    """A form cannot carry a lone surrogate (it is not UTF-8): a browser sends U+FFFD in its place."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def form_token(client: TestClient) -> str:
    """The sign form carries no CSRF token (it is checked by its origin): a stray one is ignored."""
    assert client.get("/c/mamay?lang=en").status_code == 200
    return "ignored"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(name=hostile_text, city=hostile_text, message=hostile_text)
def test_form_sign_with_any_unicode_is_refused_with_nothing_stored_or_stored_exactly(sign_client, name, city,
                                                                                     message):
    client, svc = sign_client
    typed = {"name": as_browser_sends(name), "city": as_browser_sends(city), "message": as_browser_sends(message),
             "country": "DE",
             "email": f"form{next(_serial)}@example.org"}
    before = counts(svc)
    answer = client.post("/c/mamay/sign", data={**SIGNER, **typed, "csrf_token": form_token(client)},
                         follow_redirects=False)
    check_refused_or_stored_as_typed(svc, answer, before, typed)


@FUZZ
@given(email=st.one_of(st.emails(), hostile_text, st.emails().map(lambda e: e.upper()),
                       st.tuples(st.emails(), st.sampled_from(HOSTILE)).map(lambda t: t[0] + t[1])))
def test_api_sign_with_any_email_is_refused_or_found_again_by_its_normalised_form(sign_client, email):
    client, svc = sign_client
    before = counts(svc)
    answer = post_json(client, {**SIGNER, "email": email, "consent": True})
    after = counts(svc)
    assert answer.status_code in (202, 422), (answer.status_code, answer.text[:300])
    if answer.status_code == 422:
        assert after == before
        return
    assert after[1] == before[1] + 1  # a new signer gets a confirmation, a repeat one a notice
    row = stored(svc, email.strip())
    assert row is not None, "an accepted address must find its row by its normalised form"
    kept = opened(svc, row, "email")
    assert "\r" not in kept and "\n" not in kept and "\x00" not in kept
    if after[0] == before[0] + 1 and email.isascii() and '"' not in email:
        # The mailbox is kept as typed; only the domain is normalised (lower case, IDNA shown as Unicode).
        assert kept.rpartition("@")[0] == email.strip().rpartition("@")[0]


any_value = st.one_of(hostile_text, st.integers(), st.none(), st.booleans(), st.floats(),
                      st.lists(st.text(max_size=3), max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries(
    {field: st.one_of(st.just(SIGNER[field]), st.just(SIGNER[field]), any_value) for field in SIGNER},
    optional={"discreet": any_value, "other": any_value},
))
@example({**SIGNER, "message": "lone \ud800 surrogate"})
@example({**SIGNER, "city": "\udfff"})
def test_validate_either_returns_clean_data_or_names_the_bad_fields(raw):
    try:
        clean = signing.validate(raw)
    except signing.ValidationFailed as exc:
        assert exc.errors and set(exc.errors) <= {"name", "email", "country", "city", "message", "consent", "lang"}
        return
    assert 1 <= len(clean.name) <= 100 and clean.name == clean.name.strip()
    assert clean.country in signing.COUNTRIES and clean.lang in ("en", "ru", "kk")
    for value in (clean.name, clean.city, clean.email):
        assert value.isprintable() and not set(value) & signing.BIDI_CONTROLS
    for value in (clean.name, clean.city, clean.email, clean.message):
        value.encode("utf-8")  # storable: no lone surrogate gets past validation to the encryption


# --- the email check is email-validator's --------------------------------------------------------------------

_LOCAL_ALPHABET = st.sampled_from("abcXYZ0189.!#$%&'*+/=?^_`{|}~-\"@ ()<>[]\\,;:é")
_DOMAINS = st.sampled_from([
    "example.org", "EXAMPLE.org", "mail.ru", "xn--80ak6aa92e.com", "пример.рф", "localhost", "a.invalid",
    "x.test", "-bad.org", "bad-.org", "a..b.org", ".org", "org", "[127.0.0.1]", "1.2.3.4", "a_b.org",
    "x" * 64 + ".org", ("a" * 60 + ".") * 4 + "org", "ex ample.org", "",
])


def _email_outcome(check, address: str) -> str:
    from email_validator import EmailNotValidError

    try:
        return "ok " + check(address)
    except EmailNotValidError:
        return "invalid"


@settings(max_examples=400, deadline=None)
@given(local=st.one_of(st.text(_LOCAL_ALPHABET, max_size=70), st.sampled_from(["Postmaster", "ABUSE", "a" * 64,
                                                                               "a" * 65, "a.b", ".a", "a.", "a..b"])),
       domain=st.one_of(_DOMAINS, st.emails().map(lambda e: e.rpartition("@")[2])),
       at=st.sampled_from(["@", "@@", ""]))
@example(local="x" * 64, domain="y" * 63 + "." + "z" * 63 + "." + "w" * 63 + ".org", at="@")
def test_the_cached_email_check_answers_exactly_as_email_validator(local, domain, at):
    from email_validator import validate_email

    address = local + at + domain
    plain = _email_outcome(lambda a: validate_email(a, check_deliverability=False).normalized, address)
    assert _email_outcome(addresses.checked_email, address) == plain
    assert _email_outcome(addresses.checked_email, address) == plain  # and again, from the domain cache
