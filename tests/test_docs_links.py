"""The documentation holds together: every relative link and anchor in README.md, ARCHITECTURE.md and
docs/*.md names a file and a heading that exist, and README.md stays a front door (at most 250 lines)
that keeps the install and test commands .ci/run runs."""
from __future__ import annotations

import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO_ROOT, "docs")
PAGES = [os.path.join(REPO_ROOT, "README.md"), os.path.join(REPO_ROOT, "ARCHITECTURE.md")] + sorted(
    os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$")


def prose(lines):
    """(line number, line) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def anchors(lines) -> list[str]:
    """GitHub's anchors of the headings: lower case, punctuation but '-' and '_' dropped (backticks
    too), spaces to '-', and '-1', '-2', ... after a repeated one."""
    seen: dict[str, int] = {}
    out = []
    for _, line in prose(lines):
        match = HEADING.match(line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            out.append(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_anchors_are_github_s():
    assert anchors(["# Sparse training: `--sparse-training`", "### Masked Adam (`pylth.optim.MaskedAdam`)",
                    "```", "# a comment in code", "```", "## Long runs: preemption, a second process", "## FID",
                    "## FID"]) == ["sparse-training---sparse-training", "masked-adam-pylthoptimmaskedadam",
                                   "long-runs-preemption-a-second-process", "fid", "fid-1"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for number, line in prose(read_lines(page)):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):  # not inside code spans
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
            if not os.path.exists(dest):
                broken.append(f"line {number}: {target} (no such file)")
            elif anchor and (not dest.endswith(".md") or anchor not in anchors(read_lines(dest))):
                broken.append(f"line {number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_door_that_keeps_the_commands_ci_runs():
    readme = read_lines(os.path.join(REPO_ROOT, "README.md"))
    assert len(readme) <= 250
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert 'pip install ".[test]"' in ci and "-m pytest -q tests" in ci and "-m pylth.find_ticket" in ci
    text = "\n".join(readme)
    assert 'pip install ".[test]" && python -m pytest tests' in text and "python -m pylth.find_ticket" in text
