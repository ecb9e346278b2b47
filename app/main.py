"""create_app(settings) -> FastAPI: routers, middleware, static files, error handlers, the in-process outbox."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import (
    admin,
    admin_api,
    api,
    campaigns,
    i18n,
    notices,
    outbox,
    page_cache,
    pages,
    replay,
    retention,
    static_files,
    web,
    web_embed,
    web_erasure,
    web_letters,
    web_replies,
)
from app.db import Database, utcnow
from app.intake_process import ProcessIntake
from app.ratelimit import RateLimited
from app.security import SecurityHeaders
from app.settings import Settings, load_settings
from app.state import Services

log = logging.getLogger(__name__)


def same_site_path(path: str) -> str:
    """A path that links only into this site, whatever was asked for: `//evil.example/x` (or `/\\evil.example`,
    which browsers read alike) loses its extra slashes, and anything outside plain URL characters is escaped,
    so no scheme, host or control character survives into an href."""
    return "/" + quote(path.lstrip("/\\\t\n\r "), safe="/-._~!$&'()*+,;=@%")


def served_app() -> FastAPI:
    """The app `campaign serve` runs (uvicorn's factory in each server process): settings from the environment,
    and everything built at start-up kept out of the collector's full passes, which otherwise stall requests for
    ~100 ms now and then under load (bench/sign.py, p99)."""
    return create_app(freeze_gc=True)


async def _reload_campaigns(registry: campaigns.Registry, every: float) -> None:
    """Serve added and edited campaign folders without a restart (a broken edit keeps the last good version)."""
    while True:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(registry.reload)
        except Exception:  # a folder vanishing mid-read, say: the next look tries again
            log.exception("reloading the campaigns failed")


def create_app(settings: Settings | None = None, *, db: Database | None = None, services: Services | None = None,
               clock: Callable[[], datetime] = utcnow, freeze_gc: bool = False) -> FastAPI:
    """The app, built from `settings` (or around the `services` a test already holds, which it then disposes)."""
    svc = services or Services.build(settings or load_settings(), db=db, clock=clock)
    settings = svc.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One process checkpoints the SQLite log: the sign writer, where it has a process of its own (it writes
        # nearly everything). Both had done it, each taking CPU from the other and from the event loop.
        if not isinstance(svc.intake, ProcessIntake):
            svc.db.start_checkpoints()
        svc.intake.start()
        if freeze_gc:  # what was built so far lives as long as the process
            gc.collect()
            gc.freeze()
        worker = None
        if settings.outbox_in_process:
            worker = outbox.Worker(svc.db, keyring=svc.keyring, settings=settings,
                                   poll_seconds=settings.outbox_poll_seconds,
                                   on_idle=retention.hourly(svc.db, campaigns=svc.campaigns, settings=settings),
                                   before=notices.answerer(svc.db, campaigns=svc.campaigns, keyring=svc.keyring,
                                                           composer=svc.composer, settings=settings))
            worker.start()
        reloading = None
        if settings.campaign_reload_seconds and isinstance(svc.campaigns, campaigns.Registry):
            reloading = asyncio.create_task(_reload_campaigns(svc.campaigns, settings.campaign_reload_seconds))
        try:
            yield
        finally:
            if reloading:
                reloading.cancel()
            svc.intake.stop()  # commits and answers every signature already queued
            svc.db.stop_checkpoints()
            if worker:
                worker.stop()
            if db is None and services is None:
                svc.db.dispose()

    app = FastAPI(
        title="Campaign service",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads from a CDN; the schema stays at /openapi.json
        redoc_url=None,
        # No spans, metrics or logs of requests: their URLs hold confirmation and private-page tokens, and an
        # OpenTelemetry exporter configured from the environment would ship them to a third party.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.state.services = svc
    app.state.used_forms = replay.UsedOnce(settings.redis_url, prefix="campaign:embed-form-used")  # web_embed
    app.add_middleware(page_cache.Answered, clock=svc.clock, version=lambda: pages.campaigns_version(svc))
    app.add_middleware(SecurityHeaders, hsts=settings.base_url.startswith("https://"))  # outside Answered
    app.state.page_cache = page_cache.PageCache(  # pages.public_page: public pages rendered once per period
        every=timedelta(minutes=settings.public_refresh_minutes), clock=svc.clock)
    app.include_router(static_files.router)  # from memory, content-hashed names (static_files.py)
    app.include_router(api.router)
    app.include_router(api.health_router)
    # Routes are matched in this order: the pages a spike brings come before the organisers' (a path walks
    # every router before its own; the embed had spent a fifth of its time there).
    app.include_router(web.router)
    app.include_router(web_embed.router)
    app.include_router(web_letters.router)
    app.include_router(admin.router)
    # Our validation handler (below) answers 422 as api.ErrorBody; the schema says so for the organiser API too.
    app.include_router(admin_api.router, responses={422: {"model": api.ErrorBody}})
    app.include_router(web_erasure.router)
    app.include_router(web_replies.router)

    for refused in (pages.Refused, RateLimited):  # one map from a refusal to its answer, page or JSON
        app.add_exception_handler(refused, pages.refusal)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path")) or "body",
             "message": err["msg"]}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/healthz":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        lang = i18n.negotiate(request.query_params.get("lang"), request.headers.get("accept-language"))
        html = i18n.page_env(lang).get_template("error.html").render(
            message_id=None, detail=str(exc.detail), status=exc.status_code, campaign=None,
            path=same_site_path(request.url.path),
        )
        # Never cached: a 404 for a private link would tell a later user of the browser that one was opened.
        return HTMLResponse(html, status_code=exc.status_code, headers={**(exc.headers or {}),
                                                                          "Cache-Control": "no-store"})

    return app
