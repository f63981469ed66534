"""The documentation holds together: a short README, and no link that leads nowhere.

- README.md stays a front door: under 250 lines (the rest lives in docs/).
- Every relative link in README.md, docs/*.md and the folder READMEs resolves to a file or folder
  of the repository, and every ``#anchor`` to a heading of its target, slugged as GitHub does.
- The page ``scripts/reliability_table.py`` rewrites exists and has its markers.

The checker is tested on a temporary page with broken links, so it cannot pass by finding none.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 250


def pages() -> list[Path]:
    """The Markdown pages whose links are checked."""
    found = [README, *sorted((REPO / "docs").glob("*.md"))]
    found += [REPO / folder / "README.md" for folder in ("jobs", "infra", "benchmarks")]
    return [page for page in found if page.exists()]


_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) or [text](target "title"); images too. Text may hold `code` and brackets one deep.
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text]
    r"\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "title")
)
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lowercase, punctuation other than
    ``-`` and ``_`` removed, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered ``-1``, ``-2``, as
    GitHub does) and explicit ``<a name=...>`` / ``<a id=...>``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            found.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            found.add(slug)
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a page's prose (not in code)."""
    found = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        prose = _INLINE_CODE.sub("", line)
        found += [(number, target) for target in _INLINE_LINK.findall(prose)]
        definition = _REFERENCE_DEF.match(line)
        if definition:
            found.append((number, definition.group(1)))
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """One line per relative link of ``page`` that does not resolve (file, folder or anchor)."""
    problems = []
    for number, target in links(page):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # URLs with a scheme (https:, mailto:) are not checked here
        path_part, _, anchor = target.partition("#")
        where = f"{page.relative_to(root)}:{number}: {target}"
        if path_part.startswith("/"):
            problems.append(f"{where}: absolute path; link relative to the page")
            continue
        resolved = (page.parent / path_part).resolve() if path_part else page
        if root.resolve() not in resolved.parents and resolved != root.resolve():
            problems.append(f"{where}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if resolved.is_dir() or resolved.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into something that is not a Markdown page")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with the anchor #{anchor}")
    return problems


# ------------------------------------------------------------------------------------- tests


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} and move detail into docs/"
    )


def test_the_pages_exist():
    names = {page.relative_to(REPO).as_posix() for page in pages()}
    for expected in (
        "README.md",
        "docs/cli.md",
        "docs/design.md",
        "docs/reliability.md",
        "docs/performance.md",
        "jobs/README.md",
        "infra/README.md",
    ):
        assert expected in names


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_readme_links_into_docs():
    targets = {target.partition("#")[0] for _, target in links(README)}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Two commands", "two-commands"),
        ("`yolo-batch run`", "yolo-batch-run"),
        ("torch.compile", "torchcompile"),
        ("Kubernetes (EKS, GKE) with KubeRay", "kubernetes-eks-gke-with-kuberay"),
        ("1. Images", "1-images"),
        ("bf16 on CPU", "bf16-on-cpu"),
        ("[Agreement](x.md) with darknet", "agreement-with-darknet"),
        ("snake_case and dash-case", "snake_case-and-dash-case"),
        ("Ünïcode stays", "ünïcode-stays"),
    ],
)
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n\n## A section\n")
    (tmp_path / "folder").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n## Local heading\n\n"
        "[fine](../other.md) [fine](../other.md#a-section) [fine](../other.md#a-section-1)\n"
        "[fine](#local-heading) [fine](../folder/) [url](https://example.org/missing.md)\n"
        "`[in code](missing-in-code.md)`\n\n"
        "```\n[in a fence](missing-in-fence.md)\n```\n\n"
        "[gone](../missing.md)\n"
        "[bad anchor](../other.md#no-such-section)\n"
        "[bad local anchor](#nowhere)\n"
        "[anchor into a folder](../folder/#x)\n"
        "[escape](../../outside.md)\n"
        "[ref]: ../also-missing.md\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 6, problems
    for expected in (
        "../missing.md: no such file",
        "#no-such-section",
        "#nowhere",
        "../folder/#x: an anchor",
        "../../outside.md: points outside",
        "../also-missing.md: no such file",
    ):
        assert any(expected in problem for problem in problems), (expected, problems)
    assert not any("in-code" in p or "in-fence" in p or "example.org" in p for p in problems)


def test_reliability_table_target_exists():
    spec = importlib.util.spec_from_file_location(
        "reliability_table", REPO / "scripts" / "reliability_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = Path(module.TARGET)
    assert target.exists(), f"scripts/reliability_table.py writes into {target}, which is missing"
    text = target.read_text(encoding="utf-8")
    assert text.count(module.BEGIN) == 1 and text.count(module.END) == 1
    assert text.index(module.BEGIN) < text.index(module.END)
    script = (REPO / "scripts" / "reliability.sh").read_text()
    assert target.relative_to(REPO).as_posix() in script, "reliability.sh names another page"
