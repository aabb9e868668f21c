"""What an identifier may contain: the one check every entry point uses (docs/security.md, "Identifiers").

Identifiers — agent ids, tool names, run ids, account names, API key labels, operator emails — are shown to
operators and written to logs. Two kinds of character make them lie about themselves:

* control characters (C0 U+0000–U+001F, DEL U+007F, C1 U+0080–U+009F, and the line/paragraph separators
  U+2028/U+2029): they end log lines, move the cursor of a terminal, or cannot be stored at all (U+0000);
* bidirectional formatting (embeddings and overrides U+202A–U+202E, isolates U+2066–U+2069, the marks U+200E,
  U+200F and U+061C): a right-to-left override makes ``<RLO>exe.live-gnip`` render as "ping-evil.exe".

``identifier_problem`` refuses both. Idempotency keys are opaque client strings and only refuse the controls
(``control_problem``): they round-trip through ``/v1/ai/status?key=…``, where the request middleware refuses
controls in every query value, and a right-to-left mark is legitimate in a key built from RTL user data.

Tool names get a stricter check (``tool_name_problem``) because policies match them: no whitespace or invisible
characters at all, and letters of one script only (Latin mixed with Cyrillic is how ``delete_usеr`` slips past a
block list), and ``normalise_tool`` is the form both a name and a policy pattern are compared in.
"""

from __future__ import annotations

import re
import unicodedata

from django.core.exceptions import ValidationError

# C0, DEL, C1. The request middleware (onceonly_site/middleware.py) refuses these in every path and query value.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# …plus the line/paragraph separators and the bidirectional formatting characters.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
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
    """None, or why ``value`` is refused as an identifier: a control or bidirectional formatting character."""
    found = UNSAFE.search(value)
    if found is None:
        return None
    return f"Control and bidirectional formatting characters are not allowed (found {_describe(found.group())})."


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


def tool_name_problem(name: str) -> str | None:
    """None, or why ``name`` cannot be a tool name (or a policy pattern for one): whitespace, a control, format or
    unassigned character anywhere, or letters of more than one script (``delete_usеr`` with a Cyrillic ``е``)."""
    if name.isascii():
        if _ASCII_TOOL.fullmatch(name):
            return None
        bad = next((c for c in name if not "\x21" <= c <= "\x7e"), " ")
        return f"A tool name has no whitespace or control characters (found {_describe(bad)})."
    for char in name:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp"):
            return f"A tool name has no whitespace, control or invisible characters (found {_describe(char)})."
    scripts = {_script(c) for c in unicodedata.normalize("NFKC", name) if c.isalpha()}
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _MIXABLE):
        return f"A tool name uses letters of one script only (found {', '.join(sorted(scripts)).lower()})."
    return None
