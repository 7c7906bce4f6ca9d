"""The read-only knowledge-base website (SPEC §9): Starlette, served by `maild serve` or `maild web`.

Pages in es/pt/en (Accept-Language; `?lang=` overrides and is remembered in
a cookie), no external assets, a Content-Security-Policy without inline
scripts, ETags. Article HTML is rendered from Markdown and sanitised
(maild/sanitize.py) when shown.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

import jinja2
from sqlalchemy import Engine, func, text
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from maild import kb
from maild.config import LANGUAGES, Settings
from maild.sanitize import markdown
from maild.storage.models import Article, InboxItem, OutboxItem, utcnow
from maild.ui import t

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
LANG_COOKIE = "maild_lang"


def negotiate(request: Request, default: str) -> tuple[str, bool]:
    """(language, set_cookie): ?lang= wins (and is remembered), then the cookie, then Accept-Language."""
    asked = request.query_params.get("lang", "")
    if asked in LANGUAGES:
        return asked, True
    cookie = request.cookies.get(LANG_COOKIE, "")
    if cookie in LANGUAGES:
        return cookie, False
    best, best_q = default, -1.0
    for part in request.headers.get("accept-language", "").split(","):
        piece = part.strip().split(";")
        code = piece[0].strip().lower()[:2]
        q = 1.0
        for p in piece[1:]:
            if p.strip().startswith("q="):
                try:
                    q = float(p.strip()[2:])
                except ValueError:
                    q = 0.0
        if code in LANGUAGES and q > best_q:
            best, best_q = code, q
    return best, False


class Site:
    def __init__(self, settings: Settings, engine: Engine, *, metrics: Callable[[], bytes] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(resources.files("maild.templates") / "pages")),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.globals["t"] = t
        self.app = Starlette(
            routes=[
                Route("/", self.home),
                Route("/c/{code}", self.category),
                Route("/a/{slug}", self.article),
                Route("/tag/{tag:path}", self.tag),
                Route("/search", self.search),
                Route("/search.json", self.search_json),
                Route("/contact", self.contact),
                Route("/healthz", self.healthz),
                Route("/metrics", self.metrics_page),
                Mount("/static", StaticFiles(directory=str(resources.files("maild.templates") / "static")),
                      name="static"),
            ],
            exception_handlers={404: self.not_found, HTTPException: self.http_error, Exception: self.server_error},
        )
        self.app.add_middleware(_Headers)

    # -- rendering ----------------------------------------------------------------
    def page(self, request: Request, template: str, lang: str, set_cookie: bool, status: int = 200,
             **context: object) -> Response:
        html = self.env.get_template(template).render(
            lang=lang, categories=self.settings.categories, path=request.url.path,
            query=dict(request.query_params), **context,
        )
        body = html.encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=60", "Vary": "Accept-Language, Cookie",
                   "Content-Language": lang}
        if status == 200 and request.headers.get("if-none-match") == etag:
            response: Response = Response(status_code=304, headers=headers)
        else:
            response = Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=headers)
        if set_cookie:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", httponly=True)
        return response

    async def db(self, fn, *args):
        return await asyncio.to_thread(self._in_session, fn, *args)

    def _in_session(self, fn, *args):
        with Session(self.engine) as session:
            return fn(session, *args)

    # -- pages ------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)

        def counts(session: Session) -> dict[str, int]:
            rows = session.exec(select(Article.category, func.count(func.distinct(Article.slug)))
                                .group_by(Article.category))
            return {c: n for c, n in rows}

        return self.page(request, "home.html", lang, cookie, counts=await self.db(counts))

    async def category(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)
        cat = self.settings.category(request.path_params["code"])
        if cat is None:
            raise HTTPException(404)

        def load(session: Session) -> list[Article]:
            return list(session.exec(select(Article).where(Article.category == cat.code)))

        articles = kb.grouped(await self.db(load), lang)
        sections = [(sub, [a for a in articles if a.subcategory == sub.name.es]) for sub in cat.subcategories]
        return self.page(request, "category.html", lang, cookie, cat=cat, sections=sections)

    async def article(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)
        slug = request.path_params["slug"]

        def load(session: Session):
            found = kb.versions(session, slug)
            chosen = kb.pick(found, lang)
            if chosen is None:
                return None, [], found
            # Related: the same subcategory first, then the category's articles sharing a tag
            # (bounded reads: a category may hold thousands of articles).
            cols = (Article.slug, Article.language, Article.title, Article.tags)  # no bodies
            same_sub = [Link(*r) for r in session.exec(
                select(*cols).where(Article.slug != slug, Article.category == chosen.category,
                                    Article.subcategory == chosen.subcategory).limit(30))]
            tagged = []
            if chosen.tags:
                tagged = [Link(*r) for r in session.exec(
                    select(*cols).where(Article.slug != slug, Article.category == chosen.category)
                    .order_by(col(Article.id)).limit(300)) if set(r[3]) & set(chosen.tags)]
            related = kb.grouped(same_sub, lang)[:6]
            seen = {a.slug for a in related}
            related += [a for a in kb.grouped(tagged, lang) if a.slug not in seen][: 6 - len(related)]
            return chosen, related, found

        chosen, related, found = await self.db(load)
        if chosen is None:
            raise HTTPException(404)
        cat = self.settings.category(chosen.category)
        sub = next((s for s in cat.subcategories if s.name.es == chosen.subcategory), None) if cat else None
        return self.page(request, "article.html", lang, cookie, article=chosen,
                         body=rendered(chosen.slug, chosen.language, chosen.checksum, chosen.body),
                         cat=cat, sub=sub, related=related, available=sorted(found),
                         fallback=chosen.language != lang)

    async def tag(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)
        tag = request.path_params["tag"]

        def load(session: Session) -> list[Article]:
            # Tags are few per article: filter in Python, portably across SQLite and PostgreSQL JSON.
            return [a for a in session.exec(select(Article)) if tag in a.tags]

        articles = kb.grouped(await self.db(load), lang)
        if not articles:
            raise HTTPException(404)
        return self.page(request, "tag.html", lang, cookie, tag=tag, articles=articles)

    async def search(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)
        q = request.query_params.get("q", "")[:200]
        results = await self.db(kb.search, q, lang) if q.strip() else []
        items = [(a, kb.snippet(a, q)) for a in results]
        return self.page(request, "search.html", lang, cookie, q=q, results=items)

    async def search_json(self, request: Request) -> Response:
        lang, _ = negotiate(request, self.settings.tickets.default_language)
        q = request.query_params.get("q", "")[:200]
        results = await self.db(kb.search, q, lang, 8) if q.strip() else []
        data = [{"slug": a.slug, "title": a.title, "language": a.language, "url": f"/a/{quote(a.slug)}",
                 "snippet": kb.snippet(a, q, 120)} for a in results]
        return JSONResponse({"q": q, "results": data}, headers={"Cache-Control": "no-store"})

    async def contact(self, request: Request) -> Response:
        lang, cookie = negotiate(request, self.settings.tickets.default_language)
        mail = self.settings.mail
        rows = []
        for cat in self.settings.categories:
            address = f"{mail.support_local}+{cat.code}@{mail.support_domain}"
            subject = f"{t('mail_subject', lang)}: {cat.name.get(lang)}"
            rows.append((cat, address, f"mailto:{address}?subject={quote(subject)}"))
        return self.page(request, "contact.html", lang, cookie, rows=rows)

    async def healthz(self, request: Request) -> Response:
        def check(session: Session) -> dict:
            session.execute(text("SELECT 1"))
            now = utcnow()
            oldest_new = session.exec(select(func.min(InboxItem.received_at)).where(InboxItem.state == "new")).one()
            oldest_due = session.exec(select(func.min(OutboxItem.next_attempt_at))
                                      .where(OutboxItem.state == "queued")).one()
            return {
                "inbox_oldest_new_s": (now - oldest_new).total_seconds() if oldest_new else 0,
                "outbox_oldest_due_s": (now - oldest_due).total_seconds() if oldest_due else 0,
            }

        try:
            data = await self.db(check)
        except Exception as exc:
            return JSONResponse({"status": "fail", "database": str(exc)[:200]}, status_code=503)
        stuck = data["inbox_oldest_new_s"] > 600 or data["outbox_oldest_due_s"] > 3600
        data["status"] = "fail" if stuck else "ok"
        return JSONResponse(data, status_code=503 if stuck else 200, headers={"Cache-Control": "no-store"})

    async def metrics_page(self, request: Request) -> Response:
        if self.metrics is None:
            raise HTTPException(404)
        return PlainTextResponse(self.metrics(), media_type="text/plain; version=0.0.4")

    # -- errors -----------------------------------------------------------------------
    async def not_found(self, request: Request, exc: Exception) -> Response:
        lang, _ = negotiate(request, self.settings.tickets.default_language)
        return self.page(request, "error.html", lang, False, status=404, title=t("not_found", lang),
                         message=t("not_found_text", lang))

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return await self.not_found(request, exc)
        return PlainTextResponse(exc.detail or "error", status_code=exc.status_code)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.exception("web: %s %s failed", request.method, request.url.path)
        lang, _ = negotiate(request, self.settings.tickets.default_language)
        return self.page(request, "error.html", lang, False, status=500, title=t("error", lang),
                         message=t("error_text", lang))


@dataclass(frozen=True)
class Link:
    """What a list of related articles needs of one, without its body."""

    slug: str
    language: str
    title: str
    tags: list[str]


@functools.lru_cache(maxsize=2048)
def rendered(slug: str, language: str, checksum: str, body: str) -> str:
    """Sanitised HTML of an article version; the checksum in the key retires it when the file changes."""
    return markdown(body)


class _Headers:
    """Security headers on every response, pages, JSON and static files alike."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.lower().encode() not in names:
                        headers.append((name.lower().encode(), value.encode()))
                if scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"public, max-age=86400"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


