"""The knowledge base: Markdown articles with TOML front matter, synced into the database, searched.

An article file:

    +++
    slug = "certificado-digital-gestion"
    category = "04"
    subcategory = "Configuración del puesto y acceso a la plataforma web"
    language = "es"
    title = "Gestión del certificado digital"
    tags = ["Certificado Digital"]
    +++
    Markdown…

One file per article and language; the slug is shared by the translations.
`sync()` validates every file first and changes nothing when one is bad;
then adds, updates and removes so the database matches the directory.
Search is full-text, accent-insensitive and ranked: SQLite FTS5
(unicode61, remove_diacritics) or a PostgreSQL tsvector over folded text.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from maild.config import LANGUAGES, Settings, fold
from maild.errors import UserError
from maild.storage.db import transaction
from maild.storage.models import Article, utcnow

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,120}$")
FRONT = re.compile(r"\A\+\+\+\s*\n(.*?)\n\+\+\+\s*\n?(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class ArticleFile:
    source: str
    slug: str
    language: str
    category: str
    subcategory: str
    title: str
    tags: tuple[str, ...]
    body: str
    checksum: str


@dataclass(frozen=True)
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


def strip_markdown(body: str) -> str:
    """Plain words of a Markdown body, for search and snippets."""
    body = re.sub(r"```.*?```", " ", body, flags=re.DOTALL)
    body = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", body)
    body = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", body)
    body = re.sub(r"<[^>]+>", " ", body)
    body = re.sub(r"[#*_`>|~-]+", " ", body)
    return " ".join(body.split())


def read_file(settings: Settings, path: Path, root: Path) -> ArticleFile:
    rel = str(path.relative_to(root))
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{rel}: not UTF-8") from None
    match = FRONT.match(content.replace("\r\n", "\n"))
    if not match:
        raise UserError(f"{rel}: no front matter (a TOML block between +++ lines at the top)")
    try:
        meta = tomllib.loads(match.group(1))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{rel}: front matter is not valid TOML: {exc}") from None
    unknown = set(meta) - {"slug", "category", "subcategory", "language", "title", "tags"}
    if unknown:
        raise UserError(f"{rel}: unknown front-matter key(s): {', '.join(sorted(unknown))}")
    for key in ("slug", "category", "subcategory", "language", "title"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise UserError(f"{rel}: front matter needs {key} = \"…\"")
    if not SLUG.match(meta["slug"]):
        raise UserError(f"{rel}: slug {meta['slug']!r}: lower-case letters, digits and hyphens only")
    if meta["language"] not in LANGUAGES:
        raise UserError(f"{rel}: language {meta['language']!r}: expected es, pt or en")
    cat = settings.category(meta["category"])
    if cat is None:
        raise UserError(f"{rel}: category {meta['category']!r}: expected one of "
                        f"{', '.join(c.code for c in settings.categories)}")
    wanted = fold(meta["subcategory"])
    sub = next((s for s in cat.subcategories if wanted in {fold(n) for n in s.name.all()}), None)
    if sub is None:
        raise UserError(f"{rel}: subcategory {meta['subcategory']!r} is not one of category {cat.code}'s: "
                        + "; ".join(s.name.es for s in cat.subcategories))
    tags = meta.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise UserError(f"{rel}: tags must be a list of words, e.g. tags = [\"Certificado Digital\"]")
    body = match.group(2).strip()
    if not body:
        raise UserError(f"{rel}: the article has no body")
    return ArticleFile(
        source=rel, slug=meta["slug"], language=meta["language"], category=cat.code, subcategory=sub.name.es,
        title=" ".join(meta["title"].split()), tags=tuple(dict.fromkeys(t.strip() for t in tags)), body=body,
        checksum=hashlib.sha256(raw).hexdigest(),
    )


def load_dir(settings: Settings, root: Path) -> list[ArticleFile]:
    if not root.is_dir():
        raise UserError(f"{root}: not a directory of Markdown articles")
    files, errors = [], []
    for path in sorted(root.rglob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        try:
            files.append(read_file(settings, path, root))
        except UserError as exc:
            errors.append(str(exc))
    seen: dict[tuple[str, str], str] = {}
    for f in files:
        key = (f.slug, f.language)
        if key in seen:
            errors.append(f"{f.source}: slug {f.slug!r} in {f.language} is also in {seen[key]}")
        seen[key] = f.source
    if errors:
        raise UserError(f"{len(errors)} bad article file(s), nothing changed: " + " | ".join(errors))
    return files


def sync(settings: Settings, engine: Engine, root: Path,
         progress: Callable[[ArticleFile], None] | None = None) -> SyncReport:
    files = load_dir(settings, root)
    added = updated = unchanged = 0
    with transaction(engine) as session:
        existing = {(a.slug, a.language): a for a in session.exec(select(Article))}
        keep = set()
        for f in files:
            key = (f.slug, f.language)
            keep.add(key)
            article = existing.get(key)
            if article is not None and article.checksum == f.checksum:
                unchanged += 1
            else:
                if article is None:
                    article = Article(slug=f.slug, language=f.language, category=f.category, subcategory="",
                                      title="", body="")
                    added += 1
                else:
                    updated += 1
                article.category, article.subcategory, article.title = f.category, f.subcategory, f.title
                article.tags, article.body, article.source, article.checksum = list(f.tags), f.body, f.source, \
                    f.checksum
                article.search_text = fold(f"{f.title} {' '.join(f.tags)} {strip_markdown(f.body)}")
                article.updated_at = utcnow()
                session.add(article)
                session.flush()
                index(session, article)
            if progress:
                progress(f)
        removed = 0
        for key, article in existing.items():
            if key not in keep:
                unindex(session, article)
                session.delete(article)
                removed += 1
    return SyncReport(added, updated, removed, unchanged)


def index(session: Session, a: Article) -> None:
    if session.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL indexes search_text itself (GIN expression index)
    session.execute(text("DELETE FROM article_fts WHERE rowid = :id"), {"id": a.id})
    session.execute(text("INSERT INTO article_fts(rowid, title, body) VALUES (:id, :t, :b)"),
                    {"id": a.id, "t": f"{a.title} {' '.join(a.tags)}", "b": strip_markdown(a.body)})


def unindex(session: Session, a: Article) -> None:
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("DELETE FROM article_fts WHERE rowid = :id"), {"id": a.id})


# -- search ------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def _terms(query: str) -> list[str]:
    return [w for w in _WORD.findall(fold(query)) if w][:12]


def search(session: Session, query: str, lang: str, limit: int = 20) -> list[Article]:
    """Ranked matches for every word of `query` (the last one as a prefix, for typing), best first.

    Results in `lang` come first; an article missing in `lang` is offered in another language.
    """
    terms = _terms(query)
    if not terms:
        return []
    if session.get_bind().dialect.name == "sqlite":
        expr = " ".join(f'"{t}"' for t in terms[:-1]) + f' "{terms[-1]}"*'
        rows = session.execute(
            text("SELECT rowid FROM article_fts WHERE article_fts MATCH :q "
                 "ORDER BY bm25(article_fts, 4.0, 1.0) LIMIT :n"),
            {"q": expr, "n": limit * 3},
        ).all()
    else:
        tsq = " & ".join(re.sub(r"[^\w]", "", t) for t in terms[:-1] if re.sub(r"[^\w]", "", t))
        last = re.sub(r"[^\w]", "", terms[-1])
        tsq = (tsq + " & " if tsq else "") + f"{last}:*"
        rows = session.execute(
            text("SELECT id FROM article WHERE to_tsvector('simple', search_text) @@ to_tsquery('simple', :q) "
                 "ORDER BY ts_rank(to_tsvector('simple', search_text), to_tsquery('simple', :q)) DESC, id "
                 "LIMIT :n"),
            {"q": tsq, "n": limit * 3},
        ).all()
    ids = [r[0] for r in rows]
    if not ids:
        return []
    by_id = {a.id: a for a in session.exec(select(Article).where(col(Article.id).in_(ids)))}
    ranked = [by_id[i] for i in ids if i in by_id]
    # One result per article: the visitor's language when it exists, else the best-ranked one.
    best: dict[str, Article] = {}
    for a in ranked:
        current = best.get(a.slug)
        if current is None or (a.language == lang and current.language != lang):
            best[a.slug] = a
    order = list(dict.fromkeys(a.slug for a in ranked))
    return [best[s] for s in order][:limit]


def snippet(article: Article, query: str, width: int = 160) -> str:
    plain = strip_markdown(article.body)
    folded = fold(plain)
    pos = -1
    for term in _terms(query):
        pos = folded.find(term)
        if pos >= 0:
            break
    start = max(0, pos - width // 3) if pos >= 0 else 0
    piece = plain[start:start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(plain) else "")


def versions(session: Session, slug: str) -> dict[str, Article]:
    return {a.language: a for a in session.exec(select(Article).where(Article.slug == slug))}


def pick(found: dict[str, Article], lang: str) -> Article | None:
    """The visitor's language, else Spanish, Portuguese, English, in that order."""
    for candidate in (lang, *LANGUAGES):
        if candidate in found:
            return found[candidate]
    return None


def grouped(articles: Iterable[Article], lang: str) -> list[Article]:
    by_slug: dict[str, dict[str, Article]] = {}
    for a in articles:
        by_slug.setdefault(a.slug, {})[a.language] = a
    chosen = [pick(v, lang) for v in by_slug.values()]
    return sorted((a for a in chosen if a is not None), key=lambda a: fold(a.title))
