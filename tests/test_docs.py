"""The documentation: complete, self-contained, and its links and snippets work.

- docs/reference.md has an entry for every public name of ``taskbuffer`` and
  ``taskbuffer.distributed``.
- Every relative link and ``#anchor`` in README.md and docs/*.md resolves to a file in the
  repository and a heading in it; nothing points outside the repository.
- The README's "Testing your code" snippet (examples/test_with_virtual_time.py, which
  ``mypy --strict`` checks with the other examples) passes under pytest with exactly the
  pytest settings the README shows next to it, warnings as errors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import taskbuffer
import taskbuffer.distributed
import taskbuffer.jobs

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
_HTML_TARGET = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)=["']([^"']+)["']""")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda m: " " * len(m[0]), line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        slug = _slug(match[2])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets: list[str] = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for pattern in (_LINK, _IMAGE, _HTML_TARGET):
            targets.extend(match[1] for match in pattern.finditer(line))
    return targets


def _relative_links() -> list[tuple[str, str]]:
    return [
        (document.relative_to(ROOT).as_posix(), target)
        for document in DOCUMENTS
        for target in links(document)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, mailto:
    ]


def test_the_link_checker_reads_links_and_anchors_as_github_does() -> None:
    assert _slug("One-off runs: `schedule_task_at`") == "one-off-runs-schedule_task_at"
    assert _slug("`task` (decorator)") == "task-decorator"
    assert _slug("Labels, tenants and the manager's event stream") == (
        "labels-tenants-and-the-managers-event-stream"
    )
    sample = ROOT / "README.md"
    assert "dependencies" in anchors(sample)
    assert "#dependencies" in links(sample)


@pytest.mark.parametrize(("document", "target"), _relative_links())
def test_relative_link_resolves(document: str, target: str) -> None:
    source = ROOT / document
    path_part, _, anchor = target.partition("#")
    destination = (source.parent / path_part).resolve() if path_part else source
    assert destination.is_relative_to(ROOT), f"{document}: {target!r} leaves the repository"
    assert destination.exists(), f"{document}: {target!r} names a file that does not exist"
    if anchor:
        assert destination.suffix == ".md", f"{document}: {target!r} anchors a non-Markdown file"
        assert anchor in anchors(destination), (
            f"{document}: {target!r}: no heading with the anchor #{anchor} in "
            f"{destination.relative_to(ROOT)}"
        )


@pytest.mark.parametrize("document", [d.relative_to(ROOT).as_posix() for d in DOCUMENTS])
def test_documents_never_point_outside_the_repository(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    for outside in ("API.md", "../shared", "/work/"):
        assert outside not in text, f"{document} mentions {outside!r}, which is not in the repo"


def _reference_entries() -> set[str]:
    """The names the reference has a heading for: each heading's first `code` span."""
    entries: set[str] = set()
    for line in _prose_lines_keeping_code(REFERENCE.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match and (code := re.match(r"`([^`]+)`", match[2])):
            entries.add(code[1])
    return entries


def _prose_lines_keeping_code(text: str) -> list[str]:
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def test_reference_has_an_entry_for_every_public_name() -> None:
    public = set(taskbuffer.__all__) | set(taskbuffer.distributed.__all__) | {"__version__"}
    public |= set(taskbuffer.jobs.__all__)
    public.add("RedisDistributedCoordinator")  # taskbuffer.distributed.redis, an opt-in module
    missing = public - _reference_entries()
    assert not missing, f"docs/reference.md has no entry (### `Name`) for {sorted(missing)}"


def test_readme_links_the_reference() -> None:
    assert "docs/reference.md" in links(ROOT / "README.md")


# ---------------------------------------------------------------- "Testing your code"


def _testing_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Testing your code\n(.*?)(?=^## )", readme, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no 'Testing your code' section"
    return match[1]


def test_testing_snippet_is_the_checked_example() -> None:
    section = _testing_section()
    assert "<!-- example: examples/test_with_virtual_time.py -->\n```python\n" in section


def test_testing_settings_set_the_fixture_loop_scope() -> None:
    block = re.search(r"```toml\n(.*?)```", _testing_section(), re.DOTALL)
    assert block, "the 'Testing your code' section shows no pyproject.toml block"
    options = tomllib.loads(block[1])["tool"]["pytest"]["ini_options"]
    assert options["asyncio_mode"] == "auto"
    assert options["asyncio_default_fixture_loop_scope"] == "function"


@pytest.mark.realtime
@pytest.mark.timeout(120)
def test_testing_snippet_passes_under_the_settings_shown(tmp_path: Path) -> None:
    block = re.search(r"```toml\n(.*?)```", _testing_section(), re.DOTALL)
    assert block
    (tmp_path / "pyproject.toml").write_text(block[1], encoding="utf-8")
    shutil.copy(ROOT / "examples" / "test_with_virtual_time.py", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        # The snippet's own settings, not this suite's: no PYTEST_* variables passed on.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b4 passed\b", result.stdout), result.stdout
    assert "warning" not in result.stdout.lower(), result.stdout
