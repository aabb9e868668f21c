"""README.md and docs/tutorial.md cannot rot: every fenced block in them is run here, in order, against a live
server, or is mapped to the test that runs it verbatim; every output they show is compared with what really comes
out; every link into docs/ resolves to a heading that exists.

How the blocks are run, the way a reader runs them:

- ``python`` blocks are pasted, in order, into one interactive console per document (``code.InteractiveConsole``,
  what ``.venv/bin/python`` gives the reader), so a block that would not paste into a shell fails too;
- ``bash`` blocks are read line by line. ``export NAME=value`` lines set the environment, with the values a reader
  substitutes (the API key ``make run`` printed, the server's address, a free port) replaced by the test's own and
  every other value used as written; a ``VAR=value`` prefix of ``make run`` configures the live server; the
  commands in ``EXECUTED`` are run here verbatim with ``bash -c``; the commands in ``MAPPED`` name the test that
  runs them; ``python manage.py`` (and ``make manage ARGS="…"``) synopsis lines are run with their placeholders
  filled in, once per alternative of each ``a|b`` choice, with and without each ``[optional]`` part;
- a ``text`` block after a code block (prose may come between) is that block's expected output, compared line by
  line once the reader's values are put back (the test's port becomes the document's port, and so on).

A block that is neither run nor mapped, or mapped to a test that does not exist, fails
``test_every_block_is_executed_or_mapped``.
"""

from __future__ import annotations

import code
import contextlib
import html
import io
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from django.core.management import call_command
from django.test import Client
from onceonly import OnceOnly

from billing.choices import Role
from billing.services import account_get_or_create, api_key_create, operator_create
from onceonly_site import devstack
from onceonly_site.env import env_bool
from tests.conftest import ARTIFACTS
from tests.support.servers import ROOT, CeleryWorker, free_port

DOCUMENTS = ("README.md", "docs/tutorial.md")
DEMO_PASSWORD = "tutorial-password-123"

# What the reader substitutes: variable -> the value the document shows (the test puts in its own).
READER_VALUES = {
    "ONCEONLY_BASE_URL": "http://127.0.0.1:8000/v1",  # make run's default HOST:PORT (onceonly_site/devstack.py)
    "ONCEONLY_API_KEY": "once_live_…",  # the key make run printed
    "TOOL_PORT": "8099",  # any free port
}

# Commands this test runs verbatim (regex on the command line -> how).
EXECUTED = {
    r'^\.venv/bin/python examples/tool_receiver\.py "\$TOOL_PORT"$': "background",
    r"^\.venv/bin/python$": "console",  # the python blocks that follow are pasted into an interactive console
}

# Commands other tests run verbatim: regex on the command line -> tests ("path::function" or a file).
MAPPED = {
    r"^(\w+=\S+ )*make run\b": [
        "tests/test_make_run.py::test_make_run_serves_prints_working_commands_and_ctrl_c_leaves_nothing_behind"
    ],
    r"^make test\b": [".ci/run"],  # CI's pipeline is `make test`, twice (PostgreSQL + Redis, then embedded)
    r"^celery -A onceonly_site worker$": [
        "tests/sdk/test_sdk_keyed_runs.py::test_run_and_wait_returns_the_handler_result_and_a_second_call_does_not_run_it_again"
    ],
    r"^celery -A onceonly_site beat$": ["tests/faults/test_faults.py::test_no_guarantee_is_broken"],
}

# Whole sections whose blocks another test runs verbatim: (document, heading) -> tests.
MAPPED_SECTIONS = {
    ("README.md", "Production"): ["tests/deploy/test_production.py"],
}

# Placeholders of the `python manage.py` synopsis lines in README.md, and the values this test fills in.
SYNOPSIS_VALUES = {"NAME": "Synopsis Inc", "E": "ops@synopsis.test", "P": "a-long-passphrase-42", "L": "ci"}


# --- Reading the documents -------------------------------------------------------------------------------------


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    heading: str
    output: Block | None = None  # the text block right after it
    is_output: bool = False

    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.heading})"


@dataclass
class Command:
    line: str  # the command, comments stripped, continuations joined
    kind: str  # "export", "executed", "mapped", "synopsis", "unknown"
    how: str = ""
    tests: list[str] = field(default_factory=list)


def read_blocks(doc: str) -> list[Block]:
    blocks: list[Block] = []
    heading = ""
    lines = (ROOT / doc).read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if fence is None:
            title = re.match(r"^#{1,6} (.*)$", lines[i])
            if title:
                heading = title.group(1).strip()
            i += 1
            continue
        indent, ticks, info = fence.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != ticks:
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        block = Block(doc=doc, line=start + 1, lang=info.strip(), text="\n".join(body), heading=heading)
        if block.lang == "text" and blocks and not blocks[-1].is_output:
            blocks[-1].output = block
            block.is_output = True
        blocks.append(block)
        i += 1
    return blocks


def commands(block: Block) -> list[Command]:
    joined, pending = [], ""
    for raw in block.text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        joined.append(pending + raw)
        pending = ""
    out = []
    for raw in joined:
        line = strip_comment(raw).strip()
        if not line:
            continue
        out.append(classify(block, line))
    return out


def strip_comment(line: str) -> str:
    """The line without its trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def classify(block: Block, line: str) -> Command:
    section = MAPPED_SECTIONS.get((block.doc, block.heading))
    if section:
        return Command(line, "mapped", tests=section)
    if line.startswith("export "):
        return Command(line, "export")
    for pattern, how in EXECUTED.items():
        if re.search(pattern, line):
            return Command(line, "executed", how=how)
    for pattern, tests in MAPPED.items():
        if re.search(pattern, line):
            return Command(line, "mapped", tests=tests)
    if line.startswith("python manage.py "):
        return Command(line, "synopsis")
    manage = re.fullmatch(r'make manage ARGS="([^"]+)"', line)
    if manage:  # `make manage` itself (manage.py with make run's environment) is tests/test_make_run.py's
        return Command(f"python manage.py {manage.group(1)}", "synopsis")
    return Command(line, "unknown")


def mapped_test_exists(ref: str) -> bool:
    path, _, function = ref.partition("::")
    file = ROOT / path
    if not file.is_file():
        return False
    return not function or re.search(rf"^def {re.escape(function)}\(", file.read_text(), re.M) is not None


# --- Links -----------------------------------------------------------------------------------------------------


def github_slugs(doc: Path) -> set[str]:
    """The anchors GitHub gives a document's headings (lower case, punctuation dropped, spaces to hyphens, -1, -2…
    for repeats); headings inside fenced blocks are not headings."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = None
    for line in doc.read_text().splitlines():
        fence = re.match(r"^\s*(```+)", line)
        if fence:
            in_fence = None if in_fence == fence.group(1) else (in_fence or fence.group(1))
            continue
        title = None if in_fence else re.match(r"^#{1,6} (.*?)#*\s*$", line)
        if not title:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title.group(1).strip())  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def links(doc: str) -> list[tuple[int, str, str]]:
    found = []
    in_fence = None
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        fence = re.match(r"^\s*(```+)", line)
        if fence:
            in_fence = None if in_fence == fence.group(1) else (in_fence or fence.group(1))
            continue
        if in_fence:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            found.append((number, path, anchor))
    return found


def test_every_link_resolves_to_a_file_and_a_heading():
    problems = []
    for doc in DOCUMENTS:
        for number, path, anchor in links(doc):
            file = (ROOT / doc).parent / path if path else ROOT / doc
            if not file.exists():
                problems.append(f"{doc}:{number}: {path} does not exist")
            elif anchor and anchor not in github_slugs(file):
                problems.append(f"{doc}:{number}: {path} has no heading with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_the_readme_quick_start_and_feature_list_point_at_the_docs():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "(docs/tutorial.md)" in quick_start, "the quick start links the tutorial"
    features = readme.split("## What works today", 1)[1].split("\n## ", 1)[0]
    items = [line for line in features.splitlines() if line.startswith("- ")]
    assert len(items) >= 30
    for item in items:  # one line each, with the section that explains it
        assert re.search(r"\]\(docs/[\w-]+\.md#[\w-]+\)$", item), item


# --- Every block is accounted for ------------------------------------------------------------------------------


def test_every_block_is_executed_or_mapped():
    problems = []
    for doc in DOCUMENTS:
        blocks = read_blocks(doc)
        assert blocks, doc
        for block in blocks:
            if block.is_output:
                continue
            if block.lang == "python":
                continue  # run by test_readme_blocks_run / test_tutorial_blocks_run
            if block.lang == "text":
                problems.append(f"{block.where()}: a text block that is not the output of the block before it")
            elif block.lang == "bash":
                for command in commands(block):
                    if command.kind == "unknown":
                        problems.append(f"{block.where()}: `{command.line}` is neither run here nor mapped")
                    for ref in command.tests:
                        if not mapped_test_exists(ref):
                            problems.append(f"{block.where()}: `{command.line}` is mapped to {ref}, which is missing")
            else:
                problems.append(f"{block.where()}: a ```{block.lang} block; this test knows python, bash and text")
    assert not problems, "\n".join(problems)


def test_the_make_run_summary_shown_is_the_one_make_run_prints():
    """The box shown after a `make run` block is what a first start on the defaults prints, with the password and
    the key left out (tests/test_make_run.py checks that `make run` prints it and that its commands work)."""
    base = READER_VALUES["ONCEONLY_BASE_URL"].removesuffix("/v1")
    placeholders = {"login": devstack.DEMO_EMAIL, "password": "…", "api_key": READER_VALUES["ONCEONLY_API_KEY"]}
    printed = devstack.summary(base, devstack.DEFAULT_VAR_DIR, credentials=placeholders, waiting=[]).strip("\n")
    shown = [
        block
        for doc in DOCUMENTS
        for block in read_blocks(doc)
        if block.lang == "bash" and any(re.search(r"\bmake run\b", c.line) for c in commands(block))
    ]
    assert len(shown) == len(DOCUMENTS)
    for block in shown:
        assert block.output is not None, f"{block.where()}: show what make run prints"
        assert block.output.text.strip("\n") == printed, f"{block.output.where()} is not what make run prints"


# --- Running the blocks ----------------------------------------------------------------------------------------


class Console(code.InteractiveConsole):
    """The reader's Python shell: lines are pushed one by one; an exception fails the test."""

    def showtraceback(self) -> None:
        raise sys.exc_info()[1]

    def showsyntaxerror(self, filename=None, **kwargs) -> None:
        raise sys.exc_info()[1]

    def paste(self, text: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            more = False
            for line in text.splitlines():
                more = self.push(line)
            if more:
                self.push("")
        return out.getvalue()


@dataclass
class Reader:
    """One reader's session over one document: the environment, the background processes, the shell."""

    values: dict[str, str]  # READER_VALUES' variables -> the test's values
    substitutions: dict[str, str]  # in outputs: the test's value -> what the document shows
    monkeypatch: pytest.MonkeyPatch
    settings: object
    processes: list[subprocess.Popen] = field(default_factory=list)
    console: Console = field(default_factory=lambda: Console({"__name__": "__console__"}))
    executed: list[str] = field(default_factory=list)

    def normalise(self, text: str) -> str:
        for test_value, document_value in self.substitutions.items():
            text = text.replace(test_value, document_value)
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    def export(self, command: Command, block: Block) -> None:
        for assignment in shlex.split(command.line)[1:]:
            name, _, value = assignment.partition("=")
            if name in READER_VALUES:
                assert value == READER_VALUES[name], (
                    f"{block.where()}: {name}={value}, the test expects it as the reader sees it"
                )
                value = self.values[name]
            self.monkeypatch.setenv(name, value)

    def configure_server(self, command: Command) -> None:
        """`VAR=value make run`: the live server runs with that setting, as make run's would."""
        for assignment in shlex.split(command.line):
            if "=" not in assignment:
                break
            name, _, value = assignment.partition("=")
            assert isinstance(getattr(self.settings, name), bool), f"{name} is not a boolean setting"
            self.monkeypatch.setenv(name, value)
            setattr(self.settings, name, env_bool(name))

    def run_bash(self, block: Block, command: Command) -> str:
        process = subprocess.Popen(
            ["bash", "-c", command.line],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        if command.how == "background":
            wanted = len(block.output.text.splitlines()) if block.output else 0
            lines = [process.stdout.readline() for _ in range(wanted)]
            assert process.poll() is None, f"{block.where()}: `{command.line}` exited: {''.join(lines)}"
            return "".join(lines)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, f"{block.where()}: `{command.line}` failed:\n{out}"
        return out

    def synopsis(self, block: Block, command: Command) -> None:
        """Runs a `python manage.py name --opt VALUE [--flag] [--choice a|b]` synopsis line once per alternative."""
        words = shlex.split(command.line.replace("[", " [ ").replace("]", " ] "))[2:]
        variants = [[]]
        optional = None
        for word in words:
            if word == "[":
                optional = []
                continue
            if word == "]":
                variants = [v + optional for v in variants] + variants  # with and without it
                optional = None
                continue
            choices = word.split("|") if "|" in word else [SYNOPSIS_VALUES.get(word, word)]
            if optional is not None:
                optional.append(choices)
            else:
                variants = [[*v, choices] for v in variants]
        for parts in variants:
            width = max((len(c) for c in parts), default=1)
            for n in range(width):  # each alternative of every choice once
                argv = [c[min(n, len(c) - 1)] for c in parts]
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    try:
                        call_command(*argv)
                    except Exception as exc:
                        pytest.fail(f"{block.where()}: `{' '.join(argv)}` ({command.line}) failed: {exc!r}")

    def compare(self, block: Block, actual: str) -> None:
        if block.output is None:
            return
        assert self.normalise(actual) == self.normalise(block.output.text), (
            f"{block.where()}: the output differs from {block.output.where()}"
        )

    def run(self, doc: str) -> None:
        for block in read_blocks(doc):
            if block.is_output:
                continue
            if block.lang == "python":
                self.compare(block, self.console.paste(block.text))
                self.executed.append(f"{block.where()} python")
                continue
            if block.lang != "bash":
                continue
            outputs = []
            for command in commands(block):
                if command.kind == "export":
                    self.export(command, block)
                elif command.kind == "executed" and command.how != "console":
                    outputs.append(self.run_bash(block, command))
                elif command.kind == "mapped" and re.search(r"\bmake run\b", command.line):
                    self.configure_server(command)
                elif command.kind == "synopsis":
                    self.synopsis(block, command)
                self.executed.append(f"{block.where()} {command.kind}: {command.line}")
            if any(c.kind == "executed" and c.how != "console" for c in commands(block)):
                self.compare(block, "".join(outputs))

    def stop(self) -> None:
        # The reader leaves the shell: its clients' keep-alive connections end, and with them the live server's
        # request threads and their database connections (the test database is dropped after the session).
        for value in list(self.console.locals.values()):
            if isinstance(value, OnceOnly):
                value.close()
        for process in self.processes:  # each in a session of its own: the group is what the command started
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                    break
            else:
                raise AssertionError(f"{process.args} outlived SIGKILL")


@pytest.fixture
def demo(transactional_db, plans, live_server, settings, monkeypatch):
    """What `make run` gives the reader: the demo account on the agency plan, its owner login and API key, a Celery
    worker; private tool URLs refused unless the document's `make run` line allows them."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    account, _ = account_get_or_create(name=devstack.DEMO_ACCOUNT, plan_code="agency")
    operator_create(account=account, email=devstack.DEMO_EMAIL, password=DEMO_PASSWORD, role=Role.OWNER)
    key = api_key_create(account=account, label="demo key (make run)").raw
    worker = CeleryWorker("docs", log_dir=ARTIFACTS / "workers")
    port = str(free_port())
    reader = Reader(
        values={"ONCEONLY_BASE_URL": f"{live_server.url}/v1", "ONCEONLY_API_KEY": key, "TOOL_PORT": port},
        substitutions={
            key: READER_VALUES["ONCEONLY_API_KEY"],
            live_server.url: "http://127.0.0.1:8000",
            f"127.0.0.1:{port}": f"127.0.0.1:{READER_VALUES['TOOL_PORT']}",
        },
        monkeypatch=monkeypatch,
        settings=settings,
    )
    for name in ("ONCEONLY_BASE_URL", "ONCEONLY_API_KEY", "TOOL_SECRET", "TOOL_PORT"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield reader
    finally:
        reader.stop()
        worker.stop()


@pytest.mark.slow
def test_readme_blocks_run(demo):
    # The README's reader has exported the variables its SDK section names.
    demo.monkeypatch.setenv("ONCEONLY_BASE_URL", demo.values["ONCEONLY_BASE_URL"])
    demo.monkeypatch.setenv("ONCEONLY_API_KEY", demo.values["ONCEONLY_API_KEY"])
    demo.run("README.md")
    assert any("python" in step for step in demo.executed)
    assert any("synopsis" in step for step in demo.executed)


@pytest.mark.slow
def test_tutorial_blocks_run_and_the_dashboard_shows_what_it_says(demo):
    demo.run("docs/tutorial.md")
    assert sum("python" in step for step in demo.executed) >= 8
    assert any("examples/tool_receiver.py" in step for step in demo.executed)

    # Step 9: each page of the table, as the demo operator sees it, shows every `value` its row names.
    tutorial = (ROOT / "docs/tutorial.md").read_text()
    dashboard = tutorial.split("## 9. The dashboard", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in dashboard.splitlines() if line.startswith("| ") and "`/" in line]
    assert len(rows) >= 6
    browser = Client()
    assert browser.login(username=devstack.DEMO_EMAIL, password=DEMO_PASSWORD)
    for _page, address_cell, what in rows:
        address, *click = re.findall(r"`([^`]+)`", address_cell)
        response = browser.get(address)
        assert response.status_code == 200, address
        page = response.content.decode()
        for name, value in parse_qsl(urlsplit(address).query):  # the page understood the filter it was given
            assert any(
                f'name="{name}"' in tag and f'value="{value}"' in tag for tag in re.findall(r"<input[^>]*>", page)
            ), f"{address}: no {name} filter"
        if click:  # `→ text`: follow the link with that text, as the reader clicks it
            href = re.search(rf'<a\b[^>]*href="([^"]+)"[^>]*>\s*{re.escape(click[0])}\s*</a>', page)
            assert href, f"{address} has no link {click[0]!r}"
            response = browser.get(html.unescape(href.group(1)))
            assert response.status_code == 200, href.group(1)
            page = response.content.decode()
        # What the page shows: not the choices of its filters (which name every outcome), its navigation or scripts.
        content = re.sub(r"(?s)<(select|nav|script)\b.*?</\1>", " ", page)
        content = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", content)).split())
        missing = [value for value in re.findall(r"`([^`]+)`", what) if value not in content]
        assert missing == [], f"{address_cell.strip()} does not show {missing}"
