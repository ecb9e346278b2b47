"""The spike's mix (issue 16 item 3): what a viral moment sends, request by request.

Of every 100 requests: 90 page views, 9 signatures, 1 read of the public stats API, interleaved evenly (never in
runs of one kind). The page views cycle over the petition in English, Russian and Kazakh by its `?lang=` links,
the petition reached without a language (negotiated from Accept-Language, as a first visit from a shared link
is), and the home page. Signatures alternate between the sign form (posted as a browser posts it from our own
page: urlencoded, with Origin and `Sec-Fetch-Site: same-origin`; answered 303) and the JSON API (answered 202);
every signer is valid and has an address of their own (`<tag>-<i>@example.org`), so each is a new row.

`plan(...)` is a pure function of the request number, so a run is the same sequence every time and the share of
each kind is exact over any 100 consecutive requests.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

from bench.openloop import Request, request_bytes

SLUG = "mamay"
# (kind, path, extra headers): the page views, cycled in this order.
PAGES = (
    ("page en", f"/c/{SLUG}?lang=en", {}),
    ("page ru", f"/c/{SLUG}?lang=ru", {}),
    ("page kk", f"/c/{SLUG}?lang=kk", {}),
    ("page negotiated", f"/c/{SLUG}", {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}),
    ("page en", f"/c/{SLUG}?lang=en", {}),
    ("page ru", f"/c/{SLUG}?lang=ru", {}),
    ("page kk", f"/c/{SLUG}?lang=kk", {}),
    ("page negotiated", f"/c/{SLUG}", {"Accept-Language": "kk-KZ,kk;q=0.9,ru;q=0.7"}),
    ("home", "/", {"Accept-Language": "en-GB,en;q=0.8"}),
)
STATS_PATH = f"/api/v1/campaigns/{SLUG}/stats"
SIGN_API_PATH = f"/api/v1/campaigns/{SLUG}/signatures"
SIGN_FORM_PATH = f"/c/{SLUG}/sign"
LANGS = ("en", "ru", "kk")
COUNTRIES = ("KZ", "DE", "RU", "GB", "US", "FR", "PL", "CA")


def kind_of(i: int) -> str:
    """'page', 'sign' or 'stats' for request i: 90, 9 and 1 of every 100."""
    slot = i % 100
    if slot == 99:
        return "stats"
    if slot % 11 == 10:  # slots 10, 21, ..., 98: nine, spread over the hundred
        return "sign"
    return "page"


def signer(i: int, tag: str) -> dict[str, str]:
    return {"name": f"Spike Signer {i}", "email": f"{tag}-{i}@example.org", "country": COUNTRIES[i % len(COUNTRIES)],
            "city": "Almaty", "message": "Free him now." if i % 3 else "", "lang": LANGS[i % 3]}


def plan(url: str, *, tag: str, public_url: str | None = None):
    """request number -> Request, against the server (or proxy) at `url`; a form sign names `public_url`, the
    site's public origin, as a browser on our page would."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "127.0.0.1"
    origin = (public_url or url).rstrip("/")
    pages = [Request(kind, request_bytes("GET", host, path, None, headers=headers), b"200")
             for kind, path, headers in PAGES]
    stats = Request("stats", request_bytes("GET", host, STATS_PATH, None), b"200")
    browser = {"Origin": origin, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}

    def payload_for(i: int) -> Request:
        kind = kind_of(i)
        if kind == "page":
            return pages[(i - i // 11) % len(pages)]
        if kind == "stats":
            return stats
        data = signer(i, tag)
        if (i // 100) % 2 == (i % 100 // 11) % 2:  # form and API in turn, both in every hundred
            body = urlencode({**data, "consent": "on"}).encode()
            return Request("sign form", request_bytes("POST", host, SIGN_FORM_PATH, body, headers=browser,
                                                      content_type="application/x-www-form-urlencoded"), b"303")
        body = json.dumps({**data, "consent": True}).encode()
        return Request("sign api", request_bytes("POST", host, SIGN_API_PATH, body), b"202")

    return payload_for


def group(kinds: dict[str, dict]) -> dict[str, list[str]]:
    """The kinds of a run's figures under the three the goal names."""
    out: dict[str, list[str]] = {"page views": [], "signs": [], "stats": []}
    for kind in kinds:
        out["signs" if kind.startswith("sign") else "stats" if kind == "stats" else "page views"].append(kind)
    return out
