"""Render: template name + context in, (subject, body) out. Pure.

Templates are namespaced (`mail/opened.es.txt`); a mail template's first
line is `Subject: …`, then a blank line, then the body. An operator's
template directory, when given, is searched before the packaged one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from maild.errors import ConfigError


class Renderer:
    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(resources.files("maild.templates"))))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def mail(self, name: str, lang: str, **context: object) -> tuple[str, str]:
        """Render `mail/<name>.<lang>.txt`, falling back to Spanish, into (subject, body)."""
        try:
            template = self.env.get_template(f"mail/{name}.{lang}.txt")
        except jinja2.TemplateNotFound:
            try:
                template = self.env.get_template(f"mail/{name}.es.txt")
            except jinja2.TemplateNotFound:
                raise ConfigError(f"no mail template mail/{name}.{lang}.txt nor mail/{name}.es.txt") from None
        text = template.render(**context)
        first, _, body = text.partition("\n")
        if not first.lower().startswith("subject:"):
            raise ConfigError(f"template {template.name}: the first line must be 'Subject: …'")
        subject = " ".join(first.split(":", 1)[1].split())
        return subject, body.lstrip("\n")
