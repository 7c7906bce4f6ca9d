"""The knowledge-base site through Starlette's TestClient, on the shipped sample knowledge base."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from maild import kb
from maild.errors import UserError
from maild.web import Site
from tests.conftest import ROOT

KB = ROOT / "kb"


@pytest.fixture
def site(settings, engine):
    kb.sync(settings, engine, KB)
    return TestClient(Site(settings, engine).app)


def html_lang(r) -> str:
    return re.search(r'<html lang="(\w+)"', r.text).group(1)


def test_home_lists_the_categories_in_the_visitors_language(site):
    r = site.get("/")
    assert r.status_code == 200 and html_lang(r) == "es"
    assert "04 Soporte de Tecnología" in re.sub(r"<[^>]+>|\s+", " ", r.text).replace("  ", " ")
    assert r.text.count('href="/c/') == 8
    r = site.get("/", headers={"Accept-Language": "pt-PT,pt;q=0.9,en;q=0.5"})
    assert html_lang(r) == "pt" and "Suporte de Tecnologia" in r.text
    r = site.get("/", headers={"Accept-Language": "fr-FR, en;q=0.8, pt;q=0.3"})
    assert html_lang(r) == "en"


def test_lang_parameter_overrides_and_is_remembered(site):
    r = site.get("/?lang=en", headers={"Accept-Language": "pt"})
    assert html_lang(r) == "en" and "maild_lang=en" in r.headers["set-cookie"]
    r = site.get("/c/04", headers={"Accept-Language": "pt"})  # the client kept the cookie
    assert html_lang(r) == "en" and "Technology Support" in r.text


def test_security_headers_and_no_inline_script_or_style(site):
    for path in ("/", "/c/04", "/a/problemas-openwebstart", "/search?q=java", "/contact", "/tag/Java"):
        r = site.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        for tag in re.findall(r"<script[^>]*>", r.text):
            assert "src=" in tag  # every script is a file maild serves
        assert not re.search(r"<script[^>]*>[^<]+</script>", r.text)
        assert " style=" not in r.text and "<style" not in r.text
        assert "http://" not in r.text and "https://" not in r.text  # no external assets


def test_category_page_shows_subcategories_and_their_articles(site):
    r = site.get("/c/04")
    assert "Problemas con Centro de Descargas" in r.text
    assert 'href="/a/requisitos-software-centro-descargas"' in r.text
    assert site.get("/c/99").status_code == 404


def test_article_page_breadcrumb_body_tags_related(site):
    r = site.get("/a/requisitos-software-centro-descargas")
    text = re.sub(r"<[^>]+>", "", r.text)
    assert "Ayuda y Soporte » 04. Soporte de Tecnología » Problemas con Centro de Descargas" in " ".join(
        text.split())
    assert "<strong>Java 17 o posterior</strong>" in r.text
    assert 'href="/tag/Certificado%20Digital"' in r.text
    assert 'href="/a/problemas-openwebstart"' in r.text  # related: same subcategory
    en = site.get("/a/requisitos-software-centro-descargas?lang=en")
    assert "Download Centre software requirements" in en.text and "»" in en.text


def test_missing_language_falls_back_with_a_notice(site):
    r = site.get("/a/ventanas-mantenimiento?lang=pt")
    assert r.status_code == 200 and html_lang(r) == "pt"
    assert "não está disponível em português; é mostrado em espanhol" in r.text
    assert '<article lang="es">' in r.text


def test_tag_page_counts_articles(site, settings, engine):
    from sqlmodel import Session, select

    from maild.storage.models import Article

    with Session(engine) as s:
        n = len({a.slug for a in s.exec(select(Article)) if "Certificado Digital" in a.tags})
    assert n >= 5
    r = site.get("/tag/Certificado Digital")
    assert f"{n} artículos con la etiqueta Certificado Digital" in r.text
    assert f"{n} artigos com a etiqueta Certificado Digital" in site.get("/tag/Certificado Digital?lang=pt").text
    assert site.get("/tag/nonexistent").status_code == 404


def test_search_is_full_text_accent_insensitive_and_ranked(site):
    r = site.get("/search?q=openwebstart")
    assert r.status_code == 200
    first = re.search(r'<ol class="results">\s*<li><a href="/a/([\w-]+)"', r.text).group(1)
    assert first == "problemas-openwebstart"  # title match first
    # accents do not matter either way
    assert "que-es-omie" in site.get("/search?q=informacion publica").text
    assert "pin-y-descarga-certificado" in site.get("/search?q=descárga").text
    nothing = site.get("/search?q=zzzqqq")
    assert "Nada encontrado" in nothing.text and 'href="/contact"' in nothing.text


def test_search_json_for_results_as_you_type(site):
    data = site.get("/search.json?q=certif&lang=en").json()
    assert data["q"] == "certif" and data["results"]
    slugs = [r["slug"] for r in data["results"]]
    assert "gestion-certificados-digitales" in slugs  # a prefix matches while typing
    first = data["results"][0]
    assert set(first) == {"slug", "title", "language", "url", "snippet"} and first["language"] == "en"
    assert site.get("/search.json?q=").json()["results"] == []


def test_contact_page_has_a_mailto_per_category(site):
    r = site.get("/contact")
    for code in ("01", "04", "08"):
        assert f"consultas+{code}@example.org" in r.text
        assert f'href="mailto:consultas+{code}@example.org?subject=Consulta%3A%20' in r.text
    assert "número de su consulta" in r.text  # what happens next


def test_healthz_404_and_etag(site):
    assert site.get("/healthz").json()["status"] == "ok"
    r = site.get("/nope", headers={"Accept-Language": "pt"})
    assert r.status_code == 404 and "Página não encontrada" in r.text and html_lang(r) == "pt"
    r = site.get("/c/01")
    etag = r.headers["etag"]
    again = site.get("/c/01", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert site.get("/static/style.css").headers["cache-control"].startswith("public")


def test_hostile_article_renders_inert(settings, engine, tmp_path):
    d = tmp_path / "kb"
    d.mkdir()
    (d / "x.md").write_text('+++\nslug = "xss"\ncategory = "04"\nsubcategory = "Comunicaciones y ciberseguridad"\n'
                            'language = "es"\ntitle = "Prueba <b>título</b>"\ntags = ["<script>t</script>"]\n+++\n'
                            'Hola <script>alert(1)</script>\n\n<img src="x" onerror="alert(2)">\n\n'
                            '[pulse](javascript:alert(3)) <a href="javascript:alert(4)">otro</a>\n\n'
                            '<iframe src="https://evil.example"></iframe><div onclick="alert(5)">div</div>\n')
    kb.sync(settings, engine, d)
    r = TestClient(Site(settings, engine).app).get("/a/xss")
    body = r.text.split('<div class="body">', 1)[1].split('<p class="tags">', 1)[0]
    assert "Hola" in body and "<img" in body
    assert "<script" not in body and "onerror" not in body and 'href="javascript:' not in body
    assert "<iframe" not in body and "onclick" not in body
    assert not re.search(r"<a [^>]*href=[\"']?javascript", r.text, re.IGNORECASE)
    assert "Prueba &lt;b&gt;título&lt;/b&gt;" in r.text  # names are escaped, not interpreted
    assert "&lt;script&gt;t&lt;/script&gt;" in r.text


def test_kb_sync_is_idempotent_and_all_or_nothing(settings, engine, tmp_path):
    d = tmp_path / "kb"
    shutil.copytree(KB, d)
    first = kb.sync(settings, engine, d)
    assert first.added == len(list(d.rglob("*.md"))) - 1  # README.md is not an article
    assert kb.sync(settings, engine, d).unchanged == first.added
    target = d / "es" / "app-omie.md"
    target.write_text(target.read_text().replace("La APP OMIE", "La aplicación OMIE"))
    (d / "en" / "app-omie.md").unlink()
    report = kb.sync(settings, engine, d)
    assert (report.updated, report.removed) == (1, 1)
    bad = d / "pt" / "roto.md"
    bad.write_text('+++\nslug = "roto"\ncategory = "77"\nsubcategory = "x"\nlanguage = "pt"\ntitle = "x"\n+++\nx\n')
    (d / "es" / "que-es-omie.md").unlink()
    with pytest.raises(UserError, match=r"pt/roto.md: category '77'"):
        kb.sync(settings, engine, d)
    from sqlmodel import Session, select

    from maild.storage.models import Article

    with Session(engine) as s:  # nothing changed: que-es-omie is still there
        assert s.exec(select(Article).where(Article.slug == "que-es-omie")).all()


@pytest.mark.parametrize(("front", "reason"), [
    ('slug = "Bad Slug"', "lower-case letters"),
    ('language = "fr"', "expected es, pt or en"),
    ('subcategory = "Nada"', "is not one of category 04's"),
    ('tags = "x"', "tags must be a list"),
    ('colour = "red"', "unknown front-matter key"),
])
def test_bad_article_files_name_path_and_reason(settings, tmp_path, front, reason):
    base = {"slug": 'slug = "ok"', "category": 'category = "04"',
            "subcategory": 'subcategory = "Comunicaciones y ciberseguridad"', "language": 'language = "es"',
            "title": 'title = "T"', "tags": 'tags = []'}
    key = front.split(" ")[0]
    base[key] = front
    path = tmp_path / "a.md"
    path.write_text("+++\n" + "\n".join(base.values()) + "\n+++\nCuerpo\n")
    with pytest.raises(UserError) as err:
        kb.load_dir(settings, tmp_path)
    assert "a.md" in str(err.value) and reason in str(err.value)


def test_kb_cli_sync_and_list(tmp_path, db_url, monkeypatch):
    import json

    from typer.testing import CliRunner

    from maild.cli.main import app, normalize_args

    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "config.toml").read_text().replace('url = "sqlite:///var/maild.db"', f'url = "{db_url}"'))
    runner = CliRunner()
    assert runner.invoke(app, normalize_args(["--config", str(cfg), "db", "upgrade"])).exit_code == 0
    r = runner.invoke(app, normalize_args(["kb", "sync", str(KB), "--config", str(cfg)]))
    assert r.exit_code == 0 and "added" in r.stdout
    rows = json.loads(runner.invoke(app, normalize_args(["kb", "list", "--json", "--config", str(cfg)])).stdout)
    assert len({r["slug"] for r in rows}) >= 25 and {r["language"] for r in rows} == {"es", "pt", "en"}
    assert {r["category"] for r in rows} == {f"0{i}" for i in range(1, 9)}
    bad = runner.invoke(app, normalize_args(["kb", "sync", str(tmp_path / "nope"), "--config", str(cfg)]))
    assert bad.exit_code == 1 and "not a directory" in bad.stderr


def test_the_sample_kb_has_the_portals_articles():
    slugs = {p.stem for p in (KB / "es").glob("*.md")}
    for needed in ("requisitos-software-centro-descargas", "manual-usuario-centro-descargas",
                   "problemas-openwebstart", "primer-certificado-apoderado", "gestion-certificados-digitales",
                   "pin-y-descarga-certificado", "acceso-certificado-operador-sistema",
                   "solicitar-certificado-sistema-subastas"):
        assert needed in slugs
    assert Path(KB / "pt").is_dir() and Path(KB / "en").is_dir()
