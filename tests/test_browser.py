"""The site as a person uses it: Debian's headless Chromium driven by Playwright (never a downloaded browser).

Screenshots land in tests/output/ (ignored by git) for people to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import pytest
import uvicorn

from maild import kb
from maild.web import Site
from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).parent / "output"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield


@pytest.fixture
def base_url(settings, engine):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError("chromium is not installed: run 'make test' (apt-get install chromium)")
    kb.sync(settings, engine, ROOT / "kb")
    server = Server(uvicorn.Config(Site(settings, engine).app, host="127.0.0.1", port=0, log_level="warning",
                                   lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(base_url):
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(locale="es-ES", viewport={"width": 1200, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.base = base_url  # type: ignore[attr-defined]
        pg.console_errors = errors  # type: ignore[attr-defined]
        yield pg
        context.close()
        browser.close()


def test_typing_in_search_shows_the_matching_article(page):
    page.goto(page.base + "/")
    page.fill("#q", "openweb")
    link = page.locator("#live a", has_text="Problemas con OpenWebStart")
    link.wait_for(timeout=5000)
    page.screenshot(path=str(OUT / "search-as-you-type.png"), full_page=True)
    link.click()
    page.wait_for_url("**/a/problemas-openwebstart")
    assert page.locator("h1").inner_text() == "Problemas con OpenWebStart"
    assert page.console_errors == []  # nothing blocked by the CSP, no script errors


def test_search_without_javascript_submits_the_form(base_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(java_script_enabled=False, locale="es-ES")
        pg = context.new_page()
        pg.goto(base_url + "/")
        pg.fill("#q", "certificado digital")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/search?q=*")
        assert pg.locator("ol.results li").count() >= 3
        browser.close()


def test_switch_language(page):
    page.goto(page.base + "/c/04")
    assert page.get_attribute("html", "lang") == "es"
    page.click("nav.langs a[hreflang=pt]")
    page.wait_for_url("**lang=pt")
    assert page.get_attribute("html", "lang") == "pt"
    assert "Suporte de Tecnologia" in page.locator("h1").inner_text()
    page.goto(page.base + "/")  # remembered without ?lang=
    assert page.get_attribute("html", "lang") == "pt"
    page.screenshot(path=str(OUT / "home-pt.png"), full_page=True)


def test_follow_a_category_to_an_article(page):
    page.goto(page.base + "/")
    page.click("text=Soporte de Tecnología")
    page.wait_for_url("**/c/04")
    page.click("text=Requisitos de software del Centro de Descargas")
    page.wait_for_url("**/a/requisitos-software-centro-descargas")
    crumbs = page.locator("nav.crumbs").inner_text()
    assert "Ayuda y Soporte » 04. Soporte de Tecnología »" in crumbs
    page.screenshot(path=str(OUT / "article-es.png"), full_page=True)


def test_contact_page_has_mailto_links(page):
    page.goto(page.base + "/contact")
    href = page.get_attribute("a[href^='mailto:consultas+04@']", "href")
    assert href.startswith("mailto:consultas+04@example.org?subject=")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=str(OUT / "contact-phone.png"), full_page=True)


def test_hostile_article_stays_inert_in_a_real_browser(settings, engine, page, tmp_path):
    d = tmp_path / "kb"
    d.mkdir()
    (d / "x.md").write_text('+++\nslug = "xss"\ncategory = "04"\nsubcategory = "Comunicaciones y ciberseguridad"\n'
                            'language = "es"\ntitle = "XSS"\ntags = []\n+++\n'
                            'Hola <script>window.pwned = 1</script>\n\n<img src="/nope" onerror="window.pwned = 2">\n\n'
                            '<a href="javascript:window.pwned = 3" id="bad">pulse</a>\n')
    kb.sync(settings, engine, d)
    page.goto(page.base + "/a/xss")
    page.wait_for_load_state("networkidle")
    with contextlib.suppress(Exception):
        page.click("text=pulse", timeout=1000)
    assert page.evaluate("window.pwned === undefined")
