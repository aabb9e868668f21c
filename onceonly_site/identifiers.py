"""What an identifier may contain: the one check every entry point uses (docs/security.md, "Identifiers").

Identifiers — agent ids, tool names, run ids, account names, API key labels, operator emails — are shown to
operators and written to logs. Two kinds of character make them lie about themselves:

* control characters (C0 U+0000–U+001F, DEL U+007F, C1 U+0080–U+009F, and the line/paragraph separators
  U+2028/U+2029): they end log lines, move the cursor of a terminal, or cannot be stored at all (U+0000);
* bidirectional formatting (embeddings and overrides U+202A–U+202E, isolates U+2066–U+2069, the marks U+200E,
  U+200F and U+061C): a right-to-left override makes ``<RLO>exe.live-gnip`` render as "ping-evil.exe".

* invisible characters that render as nothing or as a blank (soft hyphen, zero-width space, word joiner, the
  combining grapheme joiner, Hangul fillers, the braille blank, tag characters…): ``prod-bot`` and
  ``prod-bot<ZWSP>`` would be two agents that look the same.

``identifier_problem`` refuses all three. The zero-width (non-)joiners and variation selectors stay allowed there:
emoji sequences and several scripts need them. Idempotency keys are opaque client strings and only refuse the controls
(``control_problem``): they round-trip through ``/v1/ai/status?key=…``, where the request middleware refuses
controls in every query value, and a right-to-left mark is legitimate in a key built from RTL user data.

Tool names get a stricter check (``tool_name_problem``) because policies match them: no whitespace or invisible
characters at all (joiners and variation selectors included), no combining mark on a character NFKC leaves
bare (``priced`` + U+0332 is not ``priced``, yet looks like it underlined), and letters of one script only (Latin
mixed with Cyrillic is how ``delete_usеr`` slips past a block list), and ``normalise_tool`` is the form both a
name and a policy pattern are compared in.
"""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError

# C0, DEL, C1. The request middleware (onceonly_site/middleware.py) refuses these in every path and query value.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# …plus the line/paragraph separators and the bidirectional formatting characters.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Invisible: default-ignorable code points that are neither controls nor bidi formatting (above), and the blanks
# that are not whitespace (U+2800 BRAILLE PATTERN BLANK, U+3164 HANGUL FILLER and its half-width form).
INVISIBLE = re.compile(
    "[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2060-\u2064\u206a-\u206f\u2800\u3164"
    "\ufeff\uffa0\U000e0000-\U000e007f]"
)
# …and, in tool names, also the joiners and variation selectors (legitimate in emoji and some scripts elsewhere).
TOOL_INVISIBLE = re.compile("[\u200c\u200d\ufe00-\ufe0f\U000e0100-\U000e01ef]")
# A plain-ASCII tool name: printable, no space (the fast path of tool_name_problem).
_ASCII_TOOL = re.compile(r"[\x21-\x7e]+")


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}" + (f" ({unicodedata.name(char)})" if unicodedata.name(char, "") else "")


def control_problem(value: str) -> str | None:
    """None, or why ``value`` is refused: it holds a control character (C0, DEL or C1)."""
    found = CONTROL.search(value)
    if found is None:
        return None
    return f"Control characters are not allowed (found {_describe(found.group())})."


def identifier_problem(value: str) -> str | None:
    """None, or why ``value`` is refused as an identifier: a control, bidirectional formatting or invisible
    character."""
    found = UNSAFE.search(value)
    if found is not None:
        return f"Control and bidirectional formatting characters are not allowed (found {_describe(found.group())})."
    if not value.isascii() and (found := INVISIBLE.search(value)) is not None:
        return f"Invisible characters are not allowed (found {_describe(found.group())})."
    return None


def validate_identifier(value: str) -> None:
    """``identifier_problem`` as a Django validator (form fields, services): raises ``ValidationError``."""
    problem = identifier_problem(value)
    if problem is not None:
        raise ValidationError(problem, code="unsafe_characters")


# --- tool names ---------------------------------------------------------------------------------------------------

# Scripts that legitimately mix (Unicode TS #39, "Highly Restrictive"): Latin with Han and the Japanese kanas,
# with Han and Bopomofo, or with Han and Hangul. Any other pair of scripts in one name is refused.
_MIXABLE = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)
_SCRIPT_ALIASES = {"IDEOGRAPHIC": "CJK", "KANGXI": "CJK"}


def _script(char: str) -> str:
    """A letter's script, by the first word of its Unicode name: the standard library has no script property, and
    for letters the name starts with the script ("LATIN SMALL LETTER E", "CYRILLIC SMALL LETTER IE", "CJK UNIFIED
    IDEOGRAPH-4E00", "HIRAGANA LETTER A"). Called on NFKC-normalised text, so fullwidth and mathematical forms are
    already their plain letters. A letter without a name (unassigned) is a script of its own."""
    name = unicodedata.name(char, "")
    word = re.split("[ -]", name, maxsplit=1)[0] if name else f"U+{ord(char):04X}"  # KATAKANA-HIRAGANA …: kana
    return _SCRIPT_ALIASES.get(word, word)


def normalise_tool(name: str) -> str:
    """The form tool names and policy patterns are compared in: NFKC, case-folded, trimmed. ``DELETE_USER``,
    ``" delete_user"`` and ``delete＿user`` (fullwidth low line) are all ``delete_user``. Plain ASCII — nearly
    every name — takes the fast path (NFKC changes no ASCII character; casefold is lower for ASCII)."""
    if name.isascii():
        return name.strip().lower()
    return unicodedata.normalize("NFKC", name).casefold().strip()


# What a registered tool's name (governance/tools.py) and a job handler's name (idempotency/jobs.py) are made of:
# ASCII letters, digits and `_ . : -`, so no whitespace, control or look-alike character can be registered. Written
# as the inside of a character class so that the OpenAPI schema builds its ECMAScript `^[…]+$` from it.
REGISTERED_NAME_CHARS = "A-Za-z0-9_.:-"
# 1–200 of them, for `.match`. `\Z`, not `$`: `$` also matches before a final newline ("send_email\n").
REGISTERED_NAME = re.compile(rf"[{REGISTERED_NAME_CHARS}]{{1,200}}\Z")


def tool_name_problem(name: str) -> str | None:
    """None, or why ``name`` cannot be a tool name (or a policy pattern for one): whitespace, a control, format or
    unassigned character anywhere, or letters of more than one script (``delete_usеr`` with a Cyrillic ``е``)."""
    if name.isascii():
        if _ASCII_TOOL.fullmatch(name):
            return None
        bad = next((c for c in name if not "\x21" <= c <= "\x7e"), " ")
        return f"A tool name has no whitespace or control characters (found {_describe(bad)})."
    for char in name:
        if (
            char.isspace()
            or unicodedata.category(char) in ("Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp")
            or INVISIBLE.match(char)
            or TOOL_INVISIBLE.match(char)
        ):
            return f"A tool name has no whitespace, control or invisible characters (found {_describe(char)})."
    composed = unicodedata.normalize("NFKC", name)
    for before, char in zip(" " + composed, composed, strict=False):
        if unicodedata.category(char).startswith("M") and (before.isascii() or not before.isalpha()):
            # NFKC composes what has a precomposed form (e + U+0301 is é): a mark left on an ASCII character or on
            # no letter at all only changes how the name looks (U+0332 underlines, U+0338 strikes through).
            return f"A tool name has no combining mark on a plain character (found {_describe(char)})."
    scripts = {_script(c) for c in unicodedata.normalize("NFKC", name) if c.isalpha()}
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _MIXABLE):
        return f"A tool name uses letters of one script only (found {', '.join(sorted(scripts)).lower()})."
    return None
