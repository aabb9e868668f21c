"""Citations of the repository's own documents resolve, and nothing points at documents outside the repository.

The rule is written down in CONTRIBUTING.md (*Citing the docs*). In short: a citation is a path `docs/<name>.md`
followed by one or more sections, each written as the section sign and one of

- a number, `3.4`: a heading of that document whose text starts with that number (`### 3.4 Durability`,
  `## 3. Guarantees` for `3`);
- a quoted heading text, `"The error contract"`: a heading whose text is that text (compared without Markdown
  backticks and asterisks, whitespace collapsed, case-insensitive; a leading section number may be left out);
- an anchor, `the-error-contract`: the GitHub anchor of a heading.

Several sections of one document follow each other separated by a comma, `and`, `or` or a dash, each with its own
section sign. Inside a document of `docs/`, a section sign with a section and no path refers to that document.
Every other section sign in a scanned file must belong to a citation (or follow `RFC <number>`).
References to the old documents outside the repository (their names with a section sign or `.md`), and paths into
the machine's work tree or a sibling `shared` folder, are refused outright.

This file spells the section sign as an escape and splits the refused names, so that it does not cite itself.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIGN = "\u00a7"

# Which files are scanned: every tracked (or new, not ignored) text file of the repository.
TEXT_SUFFIXES = {
    ".py",
    ".lua",
    ".html",
    ".md",
    ".toml",
    ".sh",
    ".txt",
    ".cfg",
    ".ini",
    ".yml",
    ".yaml",
    ".js",
    ".css",
    ".sql",
    ".rst",
    ".j2",
}
TEXT_NAMES = {"Makefile", "Dockerfile", ".gitignore"}
SKIPPED_PREFIXES = ("static/vendor/",)  # third-party, minified
WALK_SKIPPED_DIRS = {".git", ".venv", "var", "node_modules", "test-artifacts", "__pycache__", ".pytest_cache"}

SECTION = r'(?:\d+(?:\.\d+)*|"[^"\n]+"|[a-z0-9][a-z0-9_-]*)'
CITATION = re.compile(
    rf"docs/(?P<doc>[\w./-]+?\.md)`?\s*{SIGN}(?P<first>{SECTION})"
    rf"(?P<more>(?:\s*(?:,|;|and|or|–|—|-)\s*{SIGN}{SECTION})*)"
)
SECTION_IN_CHAIN = re.compile(rf"{SIGN}({SECTION})")
RFC_SECTION = re.compile(rf"\bRFC \d+,? {SIGN}\s?[\d.]+")
REFUSED = [
    (re.compile(rf"\b(?:design|protocol)\s*{SIGN}", re.IGNORECASE), "a section of a document outside the repository"),
    (re.compile(r"\b(?:design|protocol)\.md\b", re.IGNORECASE), "a document outside the repository"),
    (re.compile(r"(?<![\w/])product/[\w.-]+\.md\b"), "a product page outside the repository"),
    (re.compile(r"/work(?=/)"), "a path into the machine's work tree"),
    (re.compile(r"\.\./shared\b"), "a path into a folder next to the repository"),
]
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


# --- the documents' headings --------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """A heading's text as compared: without backticks and asterisks, whitespace collapsed, case-folded."""
    return " ".join(text.replace("`", "").replace("*", "").split()).casefold()


def _anchor(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, spaces and hyphens stay),
    spaces turned into hyphens."""
    return re.sub(r"[^\w\- ]", "", text.replace("`", "").replace("*", "").strip().lower()).replace(" ", "-")


@dataclass
class Headings:
    numbers: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    anchors: set[str] = field(default_factory=set)


def headings_of(markdown: str) -> Headings:
    found = Headings()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match is None:
            continue
        text = match.group(2)
        plain = _plain(text)
        found.texts.add(plain)
        number = re.match(r"(\d+(?:\.\d+)*)\.?(?:\s|$)", plain)
        if number:
            found.numbers.add(number.group(1))
            found.texts.add(plain[number.end() :].strip())
        anchor = _anchor(text)
        suffix = 0
        while (anchor if not suffix else f"{anchor}-{suffix}") in found.anchors:
            suffix += 1
        found.anchors.add(anchor if not suffix else f"{anchor}-{suffix}")
    return found


def resolves(headings: Headings, section: str) -> bool:
    if section.startswith('"'):
        return _plain(section.strip('"')) in headings.texts
    if section[0].isdigit() and re.fullmatch(r"\d+(?:\.\d+)*", section):
        return section in headings.numbers
    return section in headings.anchors


@cache
def _document(relative: str) -> Headings | None:
    path = ROOT / relative
    if not path.is_file():
        return None
    return headings_of(path.read_text(encoding="utf-8"))


# --- the scan -----------------------------------------------------------------------------------------------------


def problems_in_line(line: str, document=_document, here: str | None = None) -> list[str]:
    """What is wrong with one line: unresolved citations, stray section signs, references outside the repo.

    ``here`` is the document the line belongs to when it is one of ``docs/``: its bare sections refer to it.
    """
    problems = []
    for pattern, what in REFUSED:
        for match in pattern.finditer(line):
            problems.append(f"{what}: {match.group(0)!r}")
    rest = RFC_SECTION.sub("", line)
    for match in CITATION.finditer(line):
        doc = f"docs/{match.group('doc')}"
        sections = [match.group("first"), *SECTION_IN_CHAIN.findall(match.group("more"))]
        headings = document(doc)
        if headings is None:
            problems.append(f"{doc} does not exist")
        else:
            problems += [f"{doc} has no heading {SIGN}{s}" for s in sections if not resolves(headings, s)]
        rest = rest.replace(match.group(0), "")
    if here is not None and SIGN in rest:
        headings = document(here)
        for section in SECTION_IN_CHAIN.findall(rest):
            if headings is not None and not resolves(headings, section):
                problems.append(f"{here} has no heading {SIGN}{section}")
        rest = SECTION_IN_CHAIN.sub("", rest)
    if SIGN in rest and not any(p.startswith("a section of a document outside") for p in problems):
        problems.append(f"a {SIGN} that is not part of a docs/<name>.md citation")
    return problems


def scanned_files() -> list[Path]:
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                cwd=ROOT,
                capture_output=True,
                check=True,
                timeout=60,
            )
            .stdout.decode()
            .split("\0")
        )
        candidates = [ROOT / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: walk the tree
        candidates = [
            path
            for path in ROOT.rglob("*")
            if not WALK_SKIPPED_DIRS & set(path.relative_to(ROOT).parts[:-1]) and "egg-info" not in str(path)
        ]
    files = []
    for path in candidates:
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(SKIPPED_PREFIXES) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES or relative.startswith(".ci/"):
            files.append(path)
    return sorted(files)


def problems_in_repository() -> list[str]:
    found = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        relative = path.relative_to(ROOT).as_posix()
        here = relative if relative.startswith("docs/") and relative.endswith(".md") else None
        for number, line in enumerate(text.splitlines(), start=1):
            for problem in problems_in_line(line, here=here):
                found.append(f"{relative}:{number}: {problem}")
    return found


# --- the tests ----------------------------------------------------------------------------------------------------


def test_every_citation_resolves_and_nothing_points_outside_the_repository():
    problems = problems_in_repository()
    assert not problems, f"{len(problems)} broken or outside citation(s):\n" + "\n".join(problems)


def test_the_scan_covers_code_docs_and_configuration():
    scanned = {path.relative_to(ROOT).as_posix() for path in scanned_files()}
    for expected in (
        "README.md",
        "CONTRIBUTING.md",
        "pyproject.toml",
        "Makefile",
        "docs/api.md",
        "governance/governed_call.lua",
        "governance/services.py",
        "templates/base.html",
    ):
        assert expected in scanned
    assert not any(name.startswith("static/vendor/") for name in scanned)


SAMPLE = """# Title

## 3. Guarantees

### 3.4 Durability

### `POST /v1/check-lock`

```
## 9. Not a heading (inside a code block)
```
"""


def _sample(doc: str) -> Headings | None:
    return headings_of(SAMPLE) if doc == "docs/sample.md" else None


def test_a_section_resolves_by_number_by_heading_text_or_by_anchor():
    headings = headings_of(SAMPLE)
    for section in (
        "3",
        "3.4",
        '"Durability"',
        '"3.4 durability"',
        '"POST /v1/check-lock"',
        "34-durability",
        "post-v1check-lock",
        "3-guarantees",
    ):
        assert resolves(headings, section), section
    for section in ("3.5", "4", "9", '"Durable"', "durability", '"Not a heading (inside a code block)"'):
        assert not resolves(headings, section), section


def test_a_line_with_a_broken_citation_or_an_outside_reference_is_reported():
    def problems(line: str) -> list[str]:
        return problems_in_line(line, document=_sample)

    assert problems(f'# see docs/sample.md {SIGN}3.4 and {SIGN}3, or docs/sample.md {SIGN}"Durability".') == []
    assert problems(f"(docs/sample.md {SIGN}3.4, {SIGN}3.9)") == [f"docs/sample.md has no heading {SIGN}3.9"]
    assert problems(f"docs/missing.md {SIGN}1") == ["docs/missing.md does not exist"]
    assert problems(f"RFC 8785 {SIGN}3.2.2 canonical JSON") == []
    assert problems(f"(see {SIGN}3.4)") == [f"a {SIGN} that is not part of a docs/<name>.md citation"]
    assert problems_in_line(f"(see {SIGN}3.4, {SIGN}3)", document=_sample, here="docs/sample.md") == []
    assert problems_in_line(f"(see {SIGN}3.9)", document=_sample, here="docs/sample.md") == [
        f"docs/sample.md has no heading {SIGN}3.9"
    ]
    old = "des" + "ign " + SIGN + "3.4"
    assert problems(f"# ({old})")[0].startswith("a section of a document outside the repository")
    name, folder = "proto" + "col.md", "../sha" + "red"
    assert problems(f"the {name} reference") == [f"a document outside the repository: {name!r}"]
    assert problems("cat /wo" + "rk/shared/x") == ["a path into the machine's work tree: '/work'"]
    assert problems(f"see {folder}/style.md") == [f"a path into a folder next to the repository: {folder!r}"]
