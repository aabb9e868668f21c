"""Every Lua script's KEYS and ARGV are declared by name in Python (``onceonly_site.redis_client.LuaScript``), in
exactly the order its header documents them, and every script answers in the one reply convention (the module
docstring of onceonly_site/redis_client.py has both conventions)."""

from __future__ import annotations

import importlib
import re
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from onceonly_site.redis_client import SCRIPTS, LuaScript, get_redis
from tests.support.redis_calls import count_redis_round_trips

ROOT = Path(__file__).resolve().parents[1]
APPS = ("billing", "governance", "idempotency", "onceonly_site")
# The modules that declare scripts (importing them fills SCRIPTS).
DECLARING = (
    "billing.usage",
    "billing.ratelimit",
    "billing.login_throttle",
    "idempotency.services",
    "governance.services",
    "governance.slots",
)
DECLARATION = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(\.\.)?\] +([a-z_][a-z0-9_]*)(?: |$)")
MENTION = re.compile(r"^-- (KEYS|ARGV)\[")
SLOT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
RETURN = re.compile(r"^\s*return (.*)$")
WORD_TABLE = re.compile(r"^\{'[a-z_]+'[,}]")


def declared() -> dict[Path, LuaScript]:
    for module in DECLARING:
        importlib.import_module(module)
    return {path.resolve(): script for path, script in SCRIPTS.items()}


def lua_files() -> list[Path]:
    return sorted(path for app in APPS for path in (ROOT / app).rglob("*.lua"))


def header(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return lines[: next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))]


def body(path: Path) -> list[str]:
    return path.read_text().splitlines()[len(header(path)) :]


def header_names(path: Path) -> tuple[list[str], list[str], str | None, str | None]:
    """The KEYS and ARGV names the header declares, in order (KEYS first, their numbers checked to run 1, 2, 3…), and
    the names of a variable-length ARGV tail (``ARGV[n..]``) and of a variable-length KEYS tail (``KEYS[n..]``), if
    any: each the last line of its kind."""
    found: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    tails: dict[str, str] = {}
    for line in header(path):
        if not MENTION.match(line):
            continue
        match = DECLARATION.match(line)
        assert match, f"{path.name}: a KEYS/ARGV line of the header declares no name: {line!r}"
        kind, number, tail, name = match.groups()
        assert kind not in tails, f"{path.name}: {line!r} follows the variable-length {kind}"
        assert kind == "ARGV" or not (found["ARGV"] or "ARGV" in tails), f"{path.name}: {line!r} follows ARGV"
        assert int(number) == len(found[kind]) + 1, f"{path.name}: {kind}[{number}] is out of order"
        if tail:
            tails[kind] = name
        else:
            found[kind].append(name)
    return found["KEYS"], found["ARGV"], tails.get("ARGV"), tails.get("KEYS")


PRELUDES = {
    ROOT / "billing" / "take_token.lua",
    ROOT / "governance" / "shadow_decide.lua",
    ROOT / "governance" / "replication_id.lua",
}
PATHS = [path for path in lua_files() if path not in PRELUDES]


def test_every_lua_file_is_a_declared_script_or_a_prelude_of_one():
    scripts = declared()
    preludes = {prelude.resolve() for script in scripts.values() for prelude in script.preludes}
    assert preludes == PRELUDES
    for path in lua_files():
        assert path in scripts or path in preludes, f"{path.relative_to(ROOT)} has no LuaScript declaration"
    assert [path for path in lua_files() if path not in preludes] == PATHS


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_the_header_documents_keys_and_argv_in_the_declared_order(path):
    script = declared()[path]
    keys, args, rest, rest_keys = header_names(path)
    assert keys == list(script.key_names)
    assert args == list(script.arg_names)
    assert rest == script.rest
    assert rest_keys == script.rest_keys


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_the_body_uses_no_undeclared_slot(path):
    script = declared()[path]
    for line in body(path):
        for kind, number in SLOT.findall(line):
            count = len(script.key_names if kind == "KEYS" else script.arg_names)
            tail = script.rest if kind == "ARGV" else script.rest_keys
            assert int(number) <= count or tail, f"{path.name}: {kind}[{number}]"


def outside_local_functions(lines: list[str]) -> list[str]:
    """The lines of a script that are not inside a ``local function … end`` of its own (a helper's ``return`` is
    not the script's reply)."""
    kept, closing = [], None
    for line in lines:
        if closing is None and (match := re.match(r"^(\s*)local function ", line)):
            closing = f"{match.group(1)}end"
        elif closing is not None and line == closing:
            closing = None
        elif closing is None:
            kept.append(line)
    return kept


@pytest.mark.parametrize("path", PATHS, ids=[path.name for path in PATHS])
def test_every_reply_starts_with_a_status_word(path):
    lines = outside_local_functions(body(path))
    source = "\n".join(lines)
    returns = [match.group(1) for line in lines if (match := RETURN.match(line))]
    assert returns
    for value in returns:
        if re.fullmatch(r"[a-z_]+", value):  # a table built before it is returned: `local counts = {'ok'}`
            assert re.search(rf"local {value} = \{{'[a-z_]+'", source), f"{path.name}: return {value}"
        else:
            assert WORD_TABLE.match(value), f"{path.name}: return {value}"


# --- LuaScript itself ------------------------------------------------------------------------------------------


class EchoKeys(NamedTuple):
    first: str
    second: str | None = None


class EchoArgs(NamedTuple):
    one: int
    two: int | None = None


@pytest.fixture
def echo(tmp_path) -> LuaScript[EchoKeys, EchoArgs]:
    path = tmp_path / "echo.lua"
    path.write_text(
        "-- KEYS[1] first\n-- KEYS[2] second\n-- ARGV[1] one\n-- ARGV[2] two\n-- ARGV[3..] more\n"
        "return {'ok', #KEYS, #ARGV, ARGV[#ARGV]}\n"
    )
    script = LuaScript(path, EchoKeys, EchoArgs, rest="more")
    yield script
    del SCRIPTS[path]


def test_keys_and_argv_are_built_by_name_and_sent_in_the_declared_order(echo):
    assert header_names(echo.path) == (["first", "second"], ["one", "two"], "more", None)
    reply = echo(get_redis(), EchoKeys(first="a", second="b"), EchoArgs(one=1, two=2), ["last"])
    assert reply == [b"ok", 2, 3, b"last"]


class TailKeys(NamedTuple):
    first: str


def test_a_variable_length_keys_tail_follows_the_declared_keys(tmp_path, echo):
    path = tmp_path / "tail.lua"
    path.write_text("-- KEYS[1] first\n-- KEYS[2..] others\n-- ARGV[1] one\nreturn {'ok', #KEYS, KEYS[#KEYS], #ARGV}\n")
    script = LuaScript(path, TailKeys, EchoArgs, rest_keys="others")
    try:
        assert header_names(path) == (["first"], ["one"], None, "others")
        assert script(get_redis(), TailKeys(first="a"), EchoArgs(one=1), rest_keys=["b", "c"]) == [b"ok", 3, b"c", 1]
        assert script(get_redis(), TailKeys(first="a"), EchoArgs(one=1)) == [b"ok", 1, b"a", 1]
    finally:
        del SCRIPTS[path]
    with pytest.raises(TypeError, match="declares no variable-length KEYS"):
        echo(get_redis(), EchoKeys(first="a", second="b"), EchoArgs(one=1, two=2), rest_keys=["c"])
    with pytest.raises(TypeError, match="follows no optional keys"):  # the tail would take an absent key's place
        LuaScript(tmp_path / "z.lua", EchoKeys, EchoArgs, rest_keys="others")
    assert tmp_path / "z.lua" not in SCRIPTS
    for bad in ("-- KEYS[1] first\n-- KEYS[2..] others\n-- KEYS[3] late\n", "-- ARGV[1] one\n-- KEYS[1] first\n"):
        path.write_text(f"{bad}return {{'ok'}}\n")
        with pytest.raises(AssertionError, match="follows"):
            header_names(path)


def test_an_absent_optional_group_is_left_out_and_a_partial_one_refused(echo):
    assert echo(get_redis(), EchoKeys(first="a"), EchoArgs(one=7)) == [b"ok", 1, 1, b"7"]
    with pytest.raises(TypeError, match="whole or not at all"):
        echo(get_redis(), EchoKeys(first="a", second="b"), EchoArgs(one=7))


def test_a_missing_or_unknown_name_or_a_positional_list_is_refused(echo):
    with pytest.raises(TypeError):
        EchoArgs(two=2)
    with pytest.raises(TypeError):
        EchoKeys(first="a", third="c")
    with pytest.raises(TypeError, match="takes EchoKeys and EchoArgs"):
        echo(get_redis(), ["a", "b"], EchoArgs(one=1, two=2))
    with pytest.raises(TypeError, match="takes EchoKeys and EchoArgs"):
        echo(get_redis(), EchoKeys(first="a", second="b"), (1, 2))


def test_a_script_redis_does_not_know_is_loaded_on_its_first_call(tmp_path):
    path = tmp_path / "fresh.lua"
    path.write_text(f"-- KEYS[1] first\n-- ARGV[1] one\n-- unseen: {uuid.uuid4()}\nreturn {{'ok'}}\n")
    script = LuaScript(path, EchoKeys, EchoArgs)
    try:
        with count_redis_round_trips() as trips:
            assert script(get_redis(), EchoKeys(first="a"), EchoArgs(one=1)) == [b"ok"]
        assert trips.count == 2  # EVALSHA (NOSCRIPT), EVAL (which leaves it loaded)
        with count_redis_round_trips() as trips:
            assert script(get_redis(), EchoKeys(first="a"), EchoArgs(one=1)) == [b"ok"]
        assert trips.count == 1
    finally:
        del SCRIPTS[path]


def test_a_declaration_must_be_named_tuples_with_none_for_optional_fields(tmp_path):
    class Defaulted(NamedTuple):
        one: int = 0

    with pytest.raises(TypeError, match="NamedTuple"):
        LuaScript(tmp_path / "x.lua", tuple, EchoArgs)
    with pytest.raises(TypeError, match="defaults to None"):
        LuaScript(tmp_path / "y.lua", EchoKeys, Defaulted)
    assert tmp_path / "x.lua" not in SCRIPTS and tmp_path / "y.lua" not in SCRIPTS
