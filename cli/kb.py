"""`maild kb sync DIR` and `maild kb list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlmodel import col, select

from maild import kb
from maild.cli.main import JsonOpt, engine_from, new_app, settings_from
from maild.report import iso
from maild.storage.db import transaction
from maild.storage.models import Article

app = new_app("The knowledge base.")


@app.command()
def sync(ctx: typer.Context, directory: Annotated[Path, typer.Argument(metavar="DIR")]) -> None:
    """Load the knowledge base from Markdown files: add, update, remove (all or nothing)."""
    settings = settings_from(ctx, need_secret=False)
    files = kb.load_dir(settings, directory)  # validates everything first: a bad file changes nothing
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("syncing articles", total=len(files))
        report = kb.sync(settings, engine_from(settings), directory, lambda f: progress.advance(task))
    typer.echo(f"{len(files)} article file(s): {report.added} added, {report.updated} updated, "
               f"{report.removed} removed, {report.unchanged} unchanged")


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The articles, by category."""
    settings = settings_from(ctx, need_secret=False)
    with transaction(engine_from(settings)) as session:
        rows = [{"slug": a.slug, "language": a.language, "category": a.category, "subcategory": a.subcategory,
                 "title": a.title, "tags": a.tags, "source": a.source, "updated_at": iso(a.updated_at)}
                for a in session.exec(select(Article).order_by(col(Article.category), col(Article.slug),
                                                               col(Article.language)))]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"{len(rows)} article version(s)")
    for c in ("cat.", "slug", "lang", "title"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["category"], r["slug"], r["language"], r["title"])
    Console().print(table)
