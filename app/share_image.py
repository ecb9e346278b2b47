"""The picture a link preview shows for a petition (og:image): the campaign's title and its public count, drawn
here as a 1200×630 PNG with the fonts we ship, so a preview fetches nothing from another origin.

It shows only the published figures (the same snapshot as the page, changing only at the figures' boundaries),
and is drawn once per title and count in each process; every visitor gets the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
from datetime import datetime

from fastapi.responses import Response
from PIL import Image, ImageDraw, ImageFont

from app import i18n
from app.campaigns import Campaign
from app.counters import Stats
from app.settings import ROOT
from app.static_files import etag_matches

WIDTH, HEIGHT = 1200, 630  # what the large link previews show (1.91:1)
MARGIN = 72
FONTS = ROOT / "app" / "static" / "fonts"
INK, MUTED, ACCENT, PAPER, TRACK = "#1d1d1f", "#555555", "#8a1c1c", "#fdfcf8", "#e6e1d6"  # style.css's colours
TITLE_TOP, TITLE_HEIGHT = 118, 300  # the title's room, above the count
MAX_AGE_CAP = 600  # seconds a proxy may keep it, as for the pages (page_cache.MAX_AGE_CAP)


@functools.lru_cache(maxsize=8)
def _font(bold: bool, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def _leading(font: ImageFont.FreeTypeFont) -> int:
    return int(font.size * 1.2)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Words in lines no wider than `width` (a word longer than a line is cut between characters)."""
    lines: list[str] = []
    for word in text.split():
        while draw.textlength(word, font=font) > width:  # a very long word: as much of it as fits
            cut = next((i for i in range(len(word) - 1, 0, -1) if draw.textlength(word[:i], font=font) <= width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        elif word:
            lines.append(word)
    return lines


def _title_lines(draw: ImageDraw.ImageDraw, title: str) -> tuple[list[str], ImageFont.FreeTypeFont]:
    """The title in the largest size whose lines fit above the count; at the smallest, cut with an ellipsis."""
    width = WIDTH - 2 * MARGIN
    for size in (68, 60, 54, 48, 42):
        font = _font(True, size)
        lines = _wrap(draw, title, font, width)
        if len(lines) * _leading(font) <= TITLE_HEIGHT:
            return lines, font
    lines = lines[:TITLE_HEIGHT // _leading(font)]
    while draw.textlength(lines[-1] + " …", font=font) > width:
        lines[-1] = lines[-1].rsplit(" ", 1)[0] if " " in lines[-1] else lines[-1][:-1]
    lines[-1] += " …"
    return lines, font


@functools.lru_cache(maxsize=64)
def draw(title: str, count: str, figure: str, share: float, brand: str) -> bytes:
    """The PNG: brand line, title, then the count and a bar of the goal's share (0..1). Pure: same text, same
    bytes, so its hash is its ETag."""
    image = Image.new("RGB", (WIDTH, HEIGHT), PAPER)
    pen = ImageDraw.Draw(image)
    pen.rectangle((0, 0, WIDTH, 14), fill=ACCENT)
    pen.text((MARGIN, 56), brand, font=_font(True, 30), fill=ACCENT)
    lines, font = _title_lines(pen, title)
    for i, line in enumerate(lines):
        pen.text((MARGIN, TITLE_TOP + i * _leading(font)), line, font=font, fill=INK)
    number, rest = _font(True, 56), _font(False, 32)
    base = HEIGHT - 120
    pen.text((MARGIN, base), figure, font=number, fill=INK, anchor="ls")
    after = MARGIN + pen.textlength(figure, font=number) + 18
    for line in _wrap(pen, count, rest, int(WIDTH - MARGIN - after))[:1]:
        pen.text((after, base), line, font=rest, fill=MUTED, anchor="ls")
    bar = (MARGIN, HEIGHT - 90, WIDTH - MARGIN, HEIGHT - 66)
    pen.rounded_rectangle(bar, radius=12, fill=TRACK)
    filled = bar[0] + round((bar[2] - bar[0]) * max(0.0, min(1.0, share)))
    if filled > bar[0] + 24:
        pen.rounded_rectangle((bar[0], bar[1], filled, bar[3]), radius=12, fill=ACCENT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def png(campaign: Campaign, lang: str, stats: Stats) -> bytes:
    """The campaign's picture in `lang` with its published count."""
    _ = i18n.translations(lang).gettext
    figure = i18n.page_env(lang).filters["num"](stats.confirmed)
    count = _("confirmed signatures of %(goal)s") % {"goal": i18n.page_env(lang).filters["num"](stats.goal)}
    share = stats.confirmed / stats.goal if stats.goal else 0.0
    return draw(campaign.title[lang], count, figure, share, _("Letters for political prisoners"))


def response(body: bytes, *, if_none_match: str | None, now: datetime, ends_at: datetime) -> Response:
    """The picture for anyone and any proxy until the figures' next boundary (capped), with an ETag."""
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    age = max(0, min(MAX_AGE_CAP, int((ends_at - now).total_seconds())))
    headers = {"Cache-Control": f"public, max-age={age}", "ETag": etag}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="image/png", headers=headers)
