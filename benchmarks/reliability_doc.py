"""Sections of ``docs/reliability.md`` that a measurement writes: between
``<!-- BEGIN name -->`` and ``<!-- END name -->``, everything else of the page kept."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_section"]


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the markers of section ``name`` (appended when missing)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        doc = head + block + tail
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)
