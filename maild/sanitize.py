"""The one place HTML is made safe to show (SPEC §6): bleach, at render time.

bleach's maintainers stopped releasing in June 2026; everything that cleans
HTML goes through `clean()` here, so swapping the library (for nh3, say)
touches this module only. Pages add a Content-Security-Policy as a second wall.
"""

from __future__ import annotations

import bleach
from markdown_it import MarkdownIt

ALLOWED_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "hr", "i",
    "img", "li", "ol", "p", "pre", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
})
ALLOWED_ATTRIBUTES = {"a": ["href", "title"], "img": ["src", "alt", "title"], "abbr": ["title"],
                      "td": ["align"], "th": ["align"]}
ALLOWED_PROTOCOLS = frozenset({"http", "https", "mailto"})

# html=True lets authors write a little HTML; whatever they write is cleaned below.
_md = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")


def clean(html: str) -> str:
    """Only harmless tags, attributes and link schemes survive; the rest is stripped."""
    return bleach.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, protocols=ALLOWED_PROTOCOLS,
                        strip=True, strip_comments=True)


def markdown(text: str) -> str:
    """Markdown to HTML, sanitised after rendering."""
    return clean(_md.render(text))
