"""Signer safety, round 2: nobody learns whether an address signed, and nobody takes over a signature.

A prober compares the answers (status, body, cookies) and the work behind them for a new address, a pending one
and a confirmed one, on the form, the code page, the API and erasure; an attacker signs with a look-alike of the
victim's address and tries to reach the victim's private page; one address is signed 200 times.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import event, select, update

from app import addresses, erasure, notices, signing
from app.db import utcnow
from app.models import Notice, OutboxMessage, Signature
from app.state import Services
from tests.servers import AppProcess, server_env
from tests.support import SIGNER, answer_notices, body, count, csrf_token, deliver, make_settings, sign_form

CSRF_VALUE = re.compile(r'name="csrf_token" value="[^"]+"')


def confirm_in_process(svc: Services, email: str) -> None:
    """Confirm the stored signature of `email` as its link would (the test holds the database)."""
    keys = svc.keyring.email_keys(addresses.normalise_email(email))
    with svc.db.write.begin() as session:
        row = session.scalar(select(Signature).where(Signature.email_key.in_(keys)))
        signing._open(session, row, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer, now=utcnow())


def form_sign(http: httpx.Client, email: str) -> httpx.Response:
    assert http.get("/c/mamay?lang=en").status_code == 200
    return http.post("/c/mamay/sign", data={**SIGNER, "email": email},
                     headers={"Origin": str(http.base_url).rstrip("/")})


def set_cookie_shape(answer: httpx.Response) -> list[str]:
    """Each Set-Cookie with its value blanked: names and attributes must match, values must not."""
    return sorted(re.sub(r"=[^;]*", "=…", h, count=1) for h in answer.headers.get_list("set-cookie"))


def test_a_prober_learns_nothing_from_the_answers_to_a_sign_a_code_or_an_erase_request(tmp_path, sqlite_url):
    """Through the real server: a new address, a pending one and a confirmed one get the same status, body and
    cookies (names and attributes) from the form, the API, the code page and the erase request; the ticket cookie
    is random each time and holds no row id."""
    env = server_env(var_dir=tmp_path / "var", database_url=sqlite_url)
    svc = Services.build(make_settings(tmp_path, sqlite_url))
    with AppProcess(env) as server:
        with httpx.Client(base_url=server.url) as setup:
            assert form_sign(setup, "pending@example.org").status_code == 303
            assert form_sign(setup, "confirmed@example.org").status_code == 303
        confirm_in_process(svc, "confirmed@example.org")
        addresses = {"new": "new@example.org", "pending": "Pending@example.org", "confirmed": "confirmed@example.org"}
        answers, tickets, codes, api, erase = {}, {}, {}, {}, {}
        for kind, email in addresses.items():
            with httpx.Client(base_url=server.url) as http:  # a fresh browser per address
                answers[kind] = form_sign(http, email)
                tickets[kind] = http.cookies["ticket"]
                again = form_sign(http, email)  # the same browser again: a new, unrelated ticket
                assert http.cookies["ticket"] != tickets[kind] and again.status_code == 303
                token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/c/mamay/thanks").text).group(1)
                codes[kind] = http.post("/c/mamay/code", data={"code": "AAAAAAAA", "csrf_token": token, "lang": "en"})
                erase[kind] = http.post("/erase", data={"email": email, "csrf_token": token, "lang": "en"})
                api[kind] = http.post("/api/v1/campaigns/mamay/signatures",
                                      json={**SIGNER, "email": email, "consent": True})
    svc.db.dispose()
    for seen in (answers, codes, erase, api):
        assert len({a.status_code for a in seen.values()}) == 1
        assert len({CSRF_VALUE.sub("", a.text) for a in seen.values()}) == 1
        assert len({a.headers.get("location") for a in seen.values()}) == 1
        assert len({tuple(set_cookie_shape(a)) for a in seen.values()}) == 1
    assert {a.status_code for a in answers.values()} == {303} and {a.status_code for a in codes.values()} == {422}
    # Opaque and random: same length, all different, nothing in them in the clear.
    assert len(set(tickets.values())) == 3 and len({len(t) for t in tickets.values()}) == 1
    for ticket in tickets.values():
        raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
        assert "." not in ticket and len(raw) >= 12 + 16 + 8 + 32 and b"mamay" not in raw  # nonce, tag, time, hash


def statements(svc: Services, work) -> list[str]:
    """The SQL statements `work` sends (the verb and the table), in order."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        words = statement.split()
        table = next((w for i, w in enumerate(words) if i and words[i - 1] in ("INTO", "FROM", "UPDATE")), "")
        seen.append(f"{words[0]} {table}")

    event.listen(svc.db.engine, "before_cursor_execute", record)
    try:
        work()
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", record)
    return seen


def test_a_sign_and_an_erase_request_do_the_same_work_for_any_address(svc):
    """Timing follows work: the sign path and the erase request send the same statements whether the address is
    new, pending or confirmed (a repeat signature is not even looked up: it becomes a notice)."""
    campaign = svc.campaigns["mamay"]

    def sign(email: str):
        data = signing.validate({**SIGNER, "email": email, "consent": True})

        def work() -> None:
            with svc.db.write.begin() as session:
                signing.sign(session, campaign=campaign, data=data, keyring=svc.keyring,
                             settings=svc.settings, now=utcnow())
        return work

    sign("pending@example.org")()
    sign("confirmed@example.org")()
    confirm_in_process(svc, "confirmed@example.org")
    shapes = {kind: statements(svc, sign(email)) for kind, email in
              (("new", "new@example.org"), ("pending", "pending@example.org"), ("confirmed", "confirmed@example.org"))}
    # The row offered (kept, or a conflict) and a notice: its mail is made later, for every signer alike.
    assert shapes["new"] == shapes["pending"] == shapes["confirmed"] == [
        "BEGIN ", "INSERT signatures", "INSERT notices"]

    def erase_request(email: str):
        def work() -> None:
            with svc.db.write.begin() as session:
                erasure.request_link(session, email=email, lang="en", keyring=svc.keyring, now=utcnow())
        return work

    assert statements(svc, erase_request("confirmed@example.org")) == statements(svc, erase_request("no@example.org"))


def test_a_look_alike_address_never_reaches_the_signers_mail_or_page(client, svc, smtp):
    """The victim signs and confirms; an attacker signs with the same mailbox written otherwise. Nothing is mailed
    to the attacker's typing of it, and the attacker's code page opens nothing whatever they try."""
    victim = "anna.victim@example.org"
    sign_form(client, email=victim)
    deliver(svc, smtp.url)
    confirm_in_process(svc, victim)
    attacker = client.__class__(client.app, base_url="http://testserver")  # a second browser, same server:
    attacker.portal = client.portal  # its requests are served on the app's event loop, as the victim's are
    later = utcnow() + timedelta(hours=2)
    for typed in ("ANNA.VICTIM@example.org", "anna.victim+x@example.org", "Anna.Victim+y@EXAMPLE.ORG"):
        assert sign_form(attacker, email=typed).status_code == 303
        deliver(svc, smtp.url, now=later)
        later += timedelta(hours=2)
    # Every mail went to the victim's stored address, the reminders too.
    assert {to for r in smtp.sink.messages for to in r.envelope_to} == {victim}
    reminders = [r.message for r in smtp.sink.messages if "already signed" in r.message["Subject"]]
    assert len(reminders) == 3
    token = csrf_token(attacker, "/c/mamay/thanks")
    for guess in ("AAAAAAAA", "ACDEFGHJ", "", "1' OR '1'='1"):
        answer = attacker.post("/c/mamay/code", data={"code": guess, "csrf_token": token, "lang": "en"},
                               follow_redirects=False)
        assert answer.status_code == 422
    # The victim's own newest code opens the page from the victim's browser (its ticket names the same row).
    code = re.search(r"\b([A-Z0-9]{8})\b", body(reminders[-1])).group(1)
    opened = client.post("/c/mamay/code", data={"code": code, "csrf_token": csrf_token(client, "/c/mamay/thanks"),
                                                 "lang": "en"}, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"].startswith("/s/")


def test_unicode_case_folding_does_not_merge_two_mailboxes():
    assert addresses.normalise_email("große@example.org") != addresses.normalise_email("grosse@example.org")
    assert addresses.normalise_email("Anna+x@Example.ORG") == addresses.normalise_email("anna@example.org")


def test_code_guesses_are_capped_per_code_and_a_reminder_brings_a_fresh_code(client, svc, smtp):
    """Wrong codes are capped per code mailed (a repeat signature does not reset the count); only a reminder,
    mailed to the stored address at most three times a day, brings a new code with a fresh count. So guesses are
    bounded per signature and day (40 against > 2^37 codes); a stranger's ten wrong guesses end that code, and the
    signer's next reminder (or the mailed link, which guesses never touch) still opens the signature."""
    sign_form(client, email="guess@example.org")
    deliver(svc, smtp.url)
    stranger = client.__class__(client.app, base_url="http://testserver")
    stranger.portal = client.portal  # the app's own event loop, where its intake signs
    sign_form(stranger, email="GUESS@example.org")  # the same signature, from the stranger's browser
    token = csrf_token(stranger, "/c/mamay/thanks")
    for _ in range(signing.MAX_CODE_ATTEMPTS):
        assert stranger.post("/c/mamay/code", data={"code": "AAAAAAAA", "csrf_token": token}).status_code == 422
    for _ in range(3):  # more repeat signatures: no new code while the first mail is fresh, no reset
        sign_form(stranger, email="guess@example.org")
    deliver(svc, smtp.url)
    first = re.search(r"\b([A-Z0-9]{8})\b", body(smtp.sink.to("guess@example.org")[0])).group(1)
    mine = csrf_token(client, "/c/mamay/thanks")
    assert client.post("/c/mamay/code", data={"code": first, "csrf_token": mine}).status_code == 422
    # The signer signs again later: the reminder's new code works, whatever the stranger tried.
    sign_form(client, email="guess@example.org")
    deliver(svc, smtp.url, now=utcnow() + timedelta(hours=2))
    newest = re.search(r"\b([A-Z0-9]{8})\b", body(smtp.sink.to("guess@example.org")[-1])).group(1)
    opened = client.post("/c/mamay/code", data={"code": newest, "csrf_token": mine}, follow_redirects=False)
    assert opened.status_code == 303
    deliver(svc, smtp.url, now=utcnow() + timedelta(hours=2))
    kinds = Counter(r.message["Subject"].split(":")[0] for r in smtp.sink.messages)
    assert kinds == {"Please confirm your signature": 1, "You have already signed": 1, "Thank you for signing": 1}


def test_two_hundred_signs_of_one_address_send_it_one_mail_an_hour_and_three_a_day(svc, smtp):
    intake_svc = svc
    campaign = intake_svc.campaigns["mamay"]

    async def sign_all() -> list[signing.Signed]:
        data = [signing.validate({**SIGNER, "email": f"many+{i}@example.org", "consent": True}) for i in range(200)]
        intake_svc.intake.start()  # on the loop that signs, as the app's lifespan does
        try:
            return await asyncio.gather(*(intake_svc.intake.sign(campaign, d) for d in data))
        finally:
            intake_svc.intake.stop()

    answers = asyncio.run(sign_all())
    assert sum(a.created for a in answers) == 1
    sent = [deliver(svc, smtp.url, now=utcnow() + timedelta(minutes=m)).sent for m in (0, 1)]
    assert sent == [1, 0]  # the confirmation; 199 notices answered with nothing while its code is fresh
    hourly = []
    for hour in range(1, 7):  # one more sign each hour: a reminder an hour, three in a day
        with svc.db.write.begin() as session:
            signing.sign(session, campaign=campaign, data=signing.validate({**SIGNER, "email": "many@example.org",
                                                                            "consent": True}),
                         keyring=svc.keyring, settings=svc.settings, now=utcnow())
        hourly.append(deliver(svc, smtp.url, now=utcnow() + timedelta(minutes=61 * hour)).sent)
    assert hourly == [1, 1, 1, 0, 0, 0]
    with svc.db.read() as session:
        assert Counter(session.scalars(select(OutboxMessage.kind))) == {"confirm": 1, "already": 3}


@pytest.mark.parametrize("stored", ["erased", "never"])
def test_a_ticket_for_an_address_without_a_row_answers_like_any_wrong_code(client, svc, stored):
    sign_form(client, email="gone@example.org")
    if stored == "erased":
        with svc.db.write.begin() as session:
            erasure.erase(session, keys=erasure.email_keys(svc.keyring, "gone@example.org"), now=utcnow())
    else:
        with svc.db.write.begin() as session:
            session.query(Signature).delete()
    token = csrf_token(client, "/c/mamay/thanks")
    answer = client.post("/c/mamay/code", data={"code": "AAAAAAAA", "csrf_token": token, "lang": "en"})
    assert answer.status_code == 422 and "does not open a signature" in answer.text


def test_no_number_in_a_signers_own_mail_counts_rows_in_between(client, svc, smtp):
    """A prober signs their own address before and after another address: neither the confirmation link nor the
    Message-ID of their two mails carries a row number, so the gap between them says nothing (F1 of round 3)."""
    sign_form(client, email="probe1@example.org")
    sign_form(client, email="someone@example.org")
    sign_form(client, email="probe2@example.org")
    deliver(svc, smtp.url)
    seen = []
    for probe in ("probe1@example.org", "probe2@example.org"):
        [mail] = smtp.sink.to(probe)
        link = re.search(r"/confirm/([\w.-]+)", body(mail)).group(1)
        row_part, message_id = link.partition(".")[0], mail["Message-ID"]
        # An encrypted block and a keyed hash: no decimal row number, nothing that counts up.
        assert len(row_part) == 22 and not row_part.isdigit()
        assert re.fullmatch(r"<[0-9a-f]{32}@[\w.]+>", message_id) and "outbox" not in message_id
        seen.append((base64.urlsafe_b64decode(row_part + "=="), message_id))
    (block1, id1), (block2, id2) = seen
    assert abs(int.from_bytes(block1, "big") - int.from_bytes(block2, "big")) > 2**64 and id1 != id2


@pytest.mark.parametrize("path", ["/s/not-a-token", "/confirm/AAAAAAAAAAAAAAAAAAAAAA.x", "/erase/not-a-token"])
def test_a_private_link_that_opens_nothing_is_not_cached_either(client, path):
    """A cached 404 for a private link would tell a later user of the browser that one was opened."""
    answer = client.get(path)
    assert answer.status_code == 404 and answer.headers["cache-control"] == "no-store"


def test_mail_made_from_notices_is_due_at_random_times_so_a_probers_own_mails_cannot_bracket_it(tmp_path, sqlite_url):
    """Round 4: a prober signed their own address, asked for the victim's erase link, and signed again; the
    worker sent the three mails back to back, so a victim's mail (made only if they had signed) showed as a longer
    gap between the prober's own two. Each mail made from a notice is now due at its own random time."""
    svc = Services.build(make_settings(tmp_path, sqlite_url, mail_jitter_seconds=60))
    try:
        now = utcnow()
        with svc.db.write.begin() as session:
            for i in range(20):
                signing.sign(session, campaign=svc.campaigns["mamay"], keyring=svc.keyring, settings=svc.settings,
                             now=now, data=signing.validate({**SIGNER, "email": f"p{i}@example.org", "consent": True}))
            erasure.request_link(session, email="p3@example.org", lang="en", keyring=svc.keyring, now=now)
        answer_notices(svc, now=now)
        with svc.db.read() as session:
            due = [(m.next_attempt_at - now).total_seconds()
                   for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
    finally:
        svc.db.dispose()
    assert len(due) == 21 and all(0 <= d <= 60 for d in due)
    assert len(set(due)) == 21 and due != sorted(due)  # drawn one by one: neither equal nor in the order made
    assert max(due) - min(due) > 10


def test_a_notice_that_cannot_be_answered_is_dropped_alone_and_a_flood_is_answered_in_parts(svc):
    """One bad row must not hold up every later signer's mail (as one bad address once stalled the outbox), and
    the outbox worker answers at most a few batches per pass so that the mail behind a flood is still sent."""
    campaign, now = svc.campaigns["mamay"], utcnow()
    with svc.db.write.begin() as session:
        for email in ("broken@example.org", "fine@example.org"):
            signing.sign(session, campaign=campaign, keyring=svc.keyring, settings=svc.settings, now=now,
                         data=signing.validate({**SIGNER, "email": email, "consent": True}))
        broken = svc.keyring.email_key(addresses.normalise_email("broken@example.org"))
        session.execute(update(Signature).where(Signature.email_key == broken).values(key_id="gone"))
    assert answer_notices(svc, now=now) == 2
    with svc.db.read() as session:
        mailed = session.scalars(select(OutboxMessage.signature_id)).all()
        fine = session.scalar(select(Signature.id).where(Signature.key_id != "gone"))
    assert mailed == [fine] and count(svc, Notice) == 0

    with svc.db.write.begin() as session:
        signing.sign_many(session, [(campaign, signing.validate({**SIGNER, "email": f"f{i}@example.org",
                                                                  "consent": True})) for i in range(450)],
                          keyring=svc.keyring, settings=svc.settings, now=now)
    answered = notices.answer_due(svc.db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                                  settings=svc.settings, now=now, max_batches=2)
    assert answered == 2 * notices.BATCH and count(svc, Notice) == 450 - answered
