"""The README cannot rot: its Python example runs, and every relative link in README.md and
docs/*.md points at a file that exists and, for ``#anchor`` links, at a heading in it."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    lines, inside = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except '-' and '_',
    each space turned into '-' (``Event-driven arrivals (S3 → SQS)`` →
    ``event-driven-arrivals-s3--sqs``)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings suffixed -1, -2… as on GitHub."""
    found: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6} +(.*?)#*\s*$", line)
        if not match:
            continue
        slug = github_anchor(match.group(1))
        seen = found.get(slug, 0)
        found[slug] = seen + 1
        out.add(slug if seen == 0 else f"{slug}-{seen}")
    return out


def relative_links(path: Path) -> list[str]:
    """The link targets of a Markdown file that stay inside the repository."""
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:…
                targets.append(target)
    return targets


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file or heading does not exist, with the reason."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return broken


def readme_python_example() -> str:
    """The README's one ```python block."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                        re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one python block in README.md, found {len(blocks)}"
    return blocks[0]


def test_github_anchor_rules():
    assert github_anchor("Asset events and the `results_consumer` DAG") == \
        "asset-events-and-the-results_consumer-dag"
    assert github_anchor("Event-driven arrivals (S3 → SQS)") == "event-driven-arrivals-s3--sqs"
    assert github_anchor("Arrivals: `s3_arrivals`, exactly once, in batches") == \
        "arrivals-s3_arrivals-exactly-once-in-batches"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.exists()
    assert broken_links(page) == []


def test_readme_is_short_and_keeps_the_ci_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    # .ci/run calls the README's test command
    assert re.search(r"^make test\b", text, re.MULTILINE)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (python example)", "exec"), {"__name__": "__readme__"})
    document = json.loads((tmp_path / "kite.json").read_text())
    assert document["summary"]["detections"] > 0
    assert {"person", "kite"} <= set(document["summary"]["counts"])
    assert (tmp_path / "kite.coco.json").exists()
    assert (tmp_path / "kite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.getvalue().strip() == document["summary"]["description"]
    # the comment on the print line says what it prints
    promised = re.search(r"^print\(.*#\s*(.+)$", code, re.MULTILINE)
    assert promised and out.getvalue().strip() == promised.group(1).strip()


def test_architecture_lists_every_module():
    """docs/architecture.md's module table names every module and subpackage of the library."""
    table = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "include" / "tilescope"
    names = [f"{p.name}/" if p.is_dir() else p.name for p in sorted(package.iterdir())
             if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")]
    for sub in ("models", "intake", "outputs", "tasks", "airflow"):
        names += [p.name for p in sorted((package / sub).glob("*.py"))
                  if not p.name.startswith("_")]
    missing = [name for name in names if f"`{name}" not in table]
    assert missing == [], f"docs/architecture.md's module table lacks {missing}"
