"""The documentation stands on its own and keeps up with the code.

A clone of this repository is all a reader has: the README and ``docs/*.md`` must not link
outside it (``../shared/...``), every relative link must reach a file (and, for a ``#``
fragment into Markdown, a heading) that exists, and the settings table of
``docs/CONTRACT.md`` must name every field of ``Settings`` with its current default.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from orderstack.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "CONTRACT.md"
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target); the target ends at a blank or the closing parenthesis.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# [label]: target (reference definitions)
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def _prose(path: Path) -> str:
    """The file without its fenced code blocks (shell examples are not links)."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def _links(path: Path) -> list[str]:
    text = _prose(path)
    return [*_LINK.findall(text), *_REFERENCE.findall(text)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, blanks to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_prose(path)):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def test_the_docs_exist() -> None:
    assert CONTRACT in DOCS
    assert (ROOT / "README.md") in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_link_leaves_the_repository(doc: Path) -> None:
    outside = []
    for target in _links(doc):
        if _EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        resolved = (ROOT if path.startswith("/") else doc.parent) / path.lstrip("/")
        if not resolved.resolve().is_relative_to(ROOT):
            outside.append(target)
    # Also unlinked mentions such as `../shared/SPEC.md`: a clone has no such directory.
    outside += re.findall(r"\.\./shared\b\S*", doc.read_text(encoding="utf-8"))
    assert not outside, f"{doc.name} points outside the repository: {outside}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_relative_link_reaches_a_file_and_heading(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        if _EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        resolved = doc if not path else ((ROOT if path.startswith("/") else doc.parent) / path)
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.name} has broken links: {broken}"


def _contract_rows() -> dict[str, list[str]]:
    """The settings table of CONTRACT.md: setting name -> its cells."""
    rows: dict[str, list[str]] = {}
    for line in CONTRACT.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[A-Z][A-Z0-9_]*`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def _documented_default(value: object) -> str:
    """How the table writes a default (the rule the table was generated with)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def test_every_setting_is_in_the_contract_table_with_its_default() -> None:
    rows = _contract_rows()
    missing = [name for name in Settings.model_fields if name not in rows]
    assert not missing, f"docs/CONTRACT.md's configuration table lacks {missing}"
    wrong = {
        name: (rows[name][2], _documented_default(field.default))
        for name, field in Settings.model_fields.items()
        if rows[name][2] != _documented_default(field.default)
    }
    assert not wrong, f"defaults in docs/CONTRACT.md differ from config.py (doc, code): {wrong}"


def test_the_contract_table_names_no_setting_that_does_not_exist() -> None:
    stale = sorted(set(_contract_rows()) - set(Settings.model_fields))
    assert not stale, f"docs/CONTRACT.md documents settings config.py does not have: {stale}"


def test_literal_settings_list_their_choices() -> None:
    rows = _contract_rows()
    for name, field in Settings.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal:
            for choice in typing.get_args(field.annotation):
                assert f"`{choice}`" in rows[name][1], f"{name}: choice {choice!r} not listed"


def test_the_readme_links_the_contract_and_names_the_probes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/CONTRACT.md" in readme
    assert "/readyz" in readme
    assert "make run" in readme and "make test" in readme
