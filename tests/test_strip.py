"""Reply stripping on real reply shapes: what stays is exactly the new text."""

from pathlib import Path

import pytest

from maild.strip import strip_reply

CASES = sorted(p for p in (Path(__file__).parent / "data" / "replies").glob("*.txt"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_new_text_only(path: Path):
    lang = path.stem.rsplit("_", 1)[1]
    expected = path.with_suffix(".expected").read_text(encoding="utf-8").strip()
    assert strip_reply(path.read_text(encoding="utf-8"), lang if lang in ("es", "pt", "en") else "es") == expected


def test_a_message_without_history_is_kept_whole():
    text = "Primera línea.\n\nSegunda línea con - guion."
    assert strip_reply(text, "es") == text
