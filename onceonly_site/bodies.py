"""Request bodies declared once: each field both validates its value and states its OpenAPI schema.

A ``/v1`` body is a ``Body`` subclass whose class attributes are ``Field`` declarations::

    class CheckLockInput(Body):
        key = Key(256, description="…")
        ttl = Ttl()
        metadata = JsonObject(2048, description="…")

        def clean_key(self, check: BodyCheck, loc: str, value: str) -> str | None: …  # optional, per field
        def clean(self, check: BodyCheck, prefix: str) -> None: …  # optional, across fields

    body = CheckLockInput.parse(data)  # every problem in one 422 (onceonly_site.api.BodyCheck), or the values
    body.key, body.ttl, body.metadata
    extend_schema(request=CheckLockInput.serializer)  # the component "CheckLockInput(Request)" of /api/schema/

* **Validation** is the hand-written kind the API always had (a serializer costs more than check-lock's Redis round
  trip): ``parse`` walks the declared fields in order, each reporting its problems to one ``BodyCheck`` with the
  messages and ``type`` codes of the error contract, then raises one 422 listing them all. Everything that can be
  worked out from the declarations (the allowed names, the hooks, the locations) is worked out when the class is
  defined, so a request pays for the checks alone.
* **The schema** comes from the same objects: ``serializer`` is a DRF serializer class generated from the fields,
  named like the body, that drf-spectacular reads (``SchemaField`` carries each field's exact JSON Schema;
  choices, nested bodies and lists of them are real DRF fields so that their components keep their names). The
  serializer never validates anything.
* **Hooks.** ``clean_<field>(check, loc, value)`` runs right after that field, when it is valid, and returns the
  value to keep (or None after reporting a problem): a rule of one field that the field type does not have (a
  reserved agent id). ``clean(check, prefix)`` runs after all of them, for rules across fields. Errors are reported
  in the order the checks run, so the order of the declarations is the order of a 422's items.
* **Messages.** Each field type has the contract's standard messages. A body whose API always answered in its own
  words (the tools registry, a keyed run's metadata) passes ``invalid=(message, code)`` — replaces the messages of
  a value of the wrong type, missing, blank or of the wrong length — and ``refused=(message, code)`` — replaces
  those of the character rules — so that the answers stay byte for byte what they were.

Shared code: no app is imported here (tests/test_layering.py). The field types of one app (policy tool lists, the
tools registry's URL) are declared in that app, next to the rules they carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar, overload

import rfc8785
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers

from onceonly_site.api import BodyCheck, QueryValidationError, StrictSerializer
from onceonly_site.identifiers import CONTROL, REGISTERED_NAME, control_problem, identifier_problem, tool_name_problem
from onceonly_site.openapi import (
    DAY_PATTERN,
    IDENTIFIER_PATTERN,
    KEY_PATTERN,
    REGISTERED_NAME_PATTERN,
    TOOL_NAME_PATTERN,
    TOOL_NAME_RULES,
    WHITESPACE,
)
from onceonly_site.params import MAX_SAFE_INTEGER, MAX_USD, is_whole, json_number

T = TypeVar("T")
Message = tuple[str, str]  # (msg, type code) of one item of a 422
Rule = Callable[[str], str | None]  # None, or why a string is refused
ParameterLocation = Literal["query", "path", "header", "cookie"]  # where an OpenAPI parameter is sent


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a field absent from the body (null is a value: some fields take it, some refuse it)
REQUIRED: Message = ("This field is required.", "missing")
# json.dumps(value, separators=(",", ":"), ensure_ascii=False), without building an encoder per call (most of the
# cost of measuring a small object).
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Invalid(Exception):
    """One problem of one value: the ``msg`` and ``type`` of a 422 item."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code


# --- fields -------------------------------------------------------------------------------------------------------


class Field(Generic[T]):
    """One field of a body: ``clean`` validates a value (reporting to a ``BodyCheck``), ``schema`` states it.

    ``required``: absent or null is a problem (``missing``, else ``invalid``, else "This field is required.").
    Otherwise an absent field is ``default`` — and so is null when ``nullable`` (the API's usual reading of null as
    "not sent"); a field that is not nullable checks null like any other value. ``invalid``: the one message of a
    value of the wrong type or shape, where an API answers in its own words. A field type implements ``parse`` (the
    value's rules, raising ``Invalid``) and ``openapi`` (its JSON Schema without the parts this class adds).
    """

    name = ""

    def __init__(
        self,
        *,
        required: bool = False,
        nullable: bool = True,
        default: Any = None,
        description: str | None = None,
        invalid: Message | None = None,
        missing: Message | None = None,
    ) -> None:
        self.required, self.nullable, self.default = required, nullable and not required, default
        self.description, self.invalid = description, invalid
        self.missing = missing or invalid or REQUIRED

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    # A body's values live in the instance's __dict__, which wins over this non-data descriptor: reading a value is
    # a plain attribute lookup, and ``Body.field`` is the declaration.
    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type) -> T: ...
    def __get__(self, instance: object | None, owner: type) -> Self | T:
        if instance is None:
            return self
        raise AttributeError(self.name)  # a partial body's field that was not sent

    def clean(self, check: BodyCheck, loc: str, value: Any) -> T | None:
        """``value`` (MISSING when absent) checked: the value to keep, or None after reporting at ``loc``."""
        if value is MISSING or (value is None and (self.nullable or self.required)):
            if self.required:
                check.fail(loc, *self.missing)
                return None
            return self.default
        try:
            return self.parse(value)
        except Invalid as problem:
            check.fail(loc, problem.message, problem.code)
            return None

    def parse(self, value: Any) -> T:
        """``value`` (never MISSING) as the body keeps it, or ``Invalid``."""
        raise NotImplementedError

    def fail(self, message: str, code: str) -> Invalid:
        """The problem to raise: the field's own ``invalid`` message when it has one."""
        return Invalid(*(self.invalid or (message, code)))

    def openapi(self) -> dict[str, Any]:
        """The JSON Schema of a value (type and constraints)."""
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """``openapi`` plus what every field states: nullable, default, description."""
        schema = self.openapi()
        if self.nullable:
            schema["nullable"] = True
        if self.default is not None:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema

    def serializer_field(self) -> serializers.Field:
        """The field of the generated serializer that drf-spectacular reads."""
        return SchemaField(openapi=self.schema(), required=self.required)

    def valid(self, value: Any) -> bool:
        """Whether ``value`` passes ``parse`` (for the places that answer in their own words)."""
        try:
            self.parse(value)
        except Invalid:
            return False
        return True


class String(Field[T]):
    """A string: the shape (a string, not blank unless ``blank``, ``min_length``…``max_length`` characters) and then
    the ``rules`` (character checks: their messages, code ``string_pattern_mismatch``). ``pattern`` is the rules in
    JSON Schema (onceonly_site/openapi.py builds the patterns from the same character classes)."""

    rules: tuple[Rule, ...] = ()
    pattern: str | None = None
    # What ``accepts`` runs: the rules, or quicker checks that refuse exactly what they refuse (None: accepted).
    accept: tuple[Callable[[str], object], ...] = ()

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        blank: bool = False,
        rules: Sequence[Rule] | None = None,
        pattern: str | None = None,
        refused: Message | None = None,
        required: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(required=required, **kwargs)
        self.max_length, self.min_length, self.blank = max_length, min_length, blank
        if rules is not None:
            self.rules = tuple(rules)
            self.accept = self.rules
        elif not self.accept:
            self.accept = self.rules
        if pattern is not None:
            self.pattern = pattern
        self.refused = refused

    def too_long(self, value: str) -> Message:
        return f"At most {self.max_length} characters (got {len(value)}).", "string_too_long"

    def shape(self, value: Any) -> Message | None:
        """None, or why ``value`` is not a string of the field's shape (the field's own words when it has them)."""
        if not isinstance(value, str):
            problem = ("Must be a string.", "string_type")
        elif not self.blank and not value.strip():
            problem = ("Must not be empty.", "string_too_short")
        elif len(value) > self.max_length:
            problem = self.too_long(value)
        elif len(value) < self.min_length:
            problem = (f"At least {self.min_length} characters.", "string_too_short")
        else:
            return None
        return self.invalid or problem

    def refusal(self, value: str) -> Message | None:
        """None, or why the rules refuse ``value`` (a string of the right shape)."""
        for rule in self.rules:
            problem = rule(value)
            if problem is not None:
                return self.refused or (problem, "string_pattern_mismatch")
        return None

    def accepts(self, value: Any) -> bool:
        """``value`` passes every check (the fast path: the messages are worked out only for a refused value)."""
        if value.__class__ is not str:  # a JSON string is exactly a str
            return False
        size = len(value)
        if size > self.max_length or size < self.min_length or (not self.blank and (not size or value.isspace())):
            return False
        return all(accept(value) is None for accept in self.accept)

    def clean(self, check: BodyCheck, loc: str, value: Any) -> T | None:
        # ``accepts``, inlined (a key's check on check-lock's hot path)
        if (
            value.__class__ is str
            and self.min_length <= len(value) <= self.max_length
            and (self.blank or (value and not value.isspace()))
        ):
            for accept in self.accept:
                if accept(value) is not None:
                    break
            else:
                return value  # type: ignore[return-value]  # a str: T is str, or str | None for an optional field
        return super().clean(check, loc, value)

    def parse(self, value: Any) -> T:
        if self.accepts(value):
            return value
        problem = self.shape(value) or self.refusal(value)
        if problem is None:  # a str subclass (never from JSON): ``accepts`` wants exactly str, the rules accept it
            return value
        raise Invalid(*problem)

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        low = self.min_length if self.blank else max(1, self.min_length)
        if low:
            schema["minLength"] = low
        schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return schema


class Key(String[str]):
    """A non-blank string of at most ``max_length`` characters without control characters: an idempotency key, an
    event type. Control characters would make the key unreadable back: ``/v1/ai/status?key=`` refuses them."""

    rules: tuple[Rule, ...] = (control_problem,)
    accept: tuple[Callable[[str], object], ...] = (CONTROL.search,)
    pattern = KEY_PATTERN

    def __init__(self, max_length: int = 256, **kwargs: Any) -> None:
        super().__init__(max_length, **kwargs)


class Identifier(Key):
    """A ``Key`` without bidirectional formatting or invisible characters either: an identifier shown to operators
    (onceonly_site/identifiers.py)."""

    rules = (control_problem, identifier_problem)
    accept = (identifier_problem,)  # it refuses every control character too
    pattern = IDENTIFIER_PATTERN


class AgentId(Identifier):
    """An agent id: the one declaration of what one is, wherever an API takes it (a body, a keyed run's metadata,
    the path of /v1/agents/…, a tools registry scope ``agent:<id>``)."""

    MAX_LENGTH = 200

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.MAX_LENGTH, **kwargs)


class RunId(Identifier):
    """A run id (the timeline a run's events belong to): in an event, a keyed run's metadata, /v1/runs/{run_id}."""

    MAX_LENGTH = 256

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.MAX_LENGTH, **kwargs)


class ToolName(Key):
    """A tool name in a governed call or a run's actions: no whitespace, control or invisible character and letters
    of one script (``identifiers.tool_name_problem``; what no pattern can say is in the description)."""

    rules = (control_problem, tool_name_problem)
    accept = (tool_name_problem,)  # it refuses every control character too
    pattern = TOOL_NAME_PATTERN

    def __init__(self, max_length: int = 200, **kwargs: Any) -> None:
        kwargs.setdefault("description", TOOL_NAME_RULES)
        super().__init__(max_length, **kwargs)


def _registered_name_problem(value: str) -> str | None:
    return None if REGISTERED_NAME.match(value) else "1–200 characters of letters, digits, _ . : -"


class RegisteredName(String[T]):
    """A registered tool's or job handler's name (``identifiers.REGISTERED_NAME``): no whitespace, control or
    look-alike character can be registered."""

    rules = (_registered_name_problem,)
    pattern = REGISTERED_NAME_PATTERN

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(200, **kwargs)


class Text(String[T]):
    """Free text of at most ``max_length`` characters. Not blank when required or ``non_blank`` (then it may be
    absent or null, but one that is sent says something). A required one is a ``Text[str]``, any other a
    ``Text[str | None]`` (the overloads tell mypy which)."""

    NON_BLANK = rf"^[\s\S]*[^{WHITESPACE}][\s\S]*$"

    @overload
    def __init__(
        self: Text[str], max_length: int, *, required: Literal[True], non_blank: bool = False, **kwargs: Any
    ) -> None: ...
    @overload
    def __init__(
        self: Text[str | None],
        max_length: int,
        *,
        required: Literal[False] = False,
        non_blank: bool = False,
        **kwargs: Any,
    ) -> None: ...
    def __init__(self, max_length: int, *, required: bool = False, non_blank: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("blank", not (required or non_blank))
        if not kwargs["blank"] and "pattern" not in kwargs:
            kwargs["pattern"] = self.NON_BLANK
        super().__init__(max_length, required=required, **kwargs)

    def too_long(self, value: str) -> Message:
        return f"At most {self.max_length} characters.", "string_too_long"


class Ttl(Field[int | None]):
    """Seconds a key is held: a whole number from 1 to 2^53-1; above the plan's maximum it is clamped (later)."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> int | None:
        if value.__class__ is int and 1 <= value <= MAX_SAFE_INTEGER:  # the usual TTL, without a call more
            return value
        return super().clean(check, loc, value)

    def parse(self, value: Any) -> int:
        # JSON true is not a number of seconds; the bounds are compared before int() (onceonly_site/params.py).
        if not is_whole(value):
            raise Invalid("Must be a whole number of seconds.", "int_type")
        if value < 1:
            raise Invalid("Must be at least 1 second.", "greater_than_equal")
        if value > MAX_SAFE_INTEGER:
            raise Invalid(
                f"At most {MAX_SAFE_INTEGER} seconds (2^53-1); a TTL above the plan's maximum is clamped to it.",
                "less_than_equal",
            )
        return int(value)

    def openapi(self) -> dict[str, Any]:
        return {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_SAFE_INTEGER}


class Integer(Field[int | None]):
    """A whole number from ``low`` to ``high``: a JSON integer (``5.0`` is refused), or with ``whole_floats`` any
    number without a fraction (kept as an int). The bounds are compared before anything converts the number."""

    def __init__(self, low: int, high: int, *, whole_floats: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high, self.whole_floats = low, high, whole_floats

    def parse(self, value: Any) -> int:
        whole = is_whole(value) if self.whole_floats else isinstance(value, int) and not isinstance(value, bool)
        if not whole or json_number(value, self.low, self.high) is None:
            raise self.fail(f"A whole number from {self.low} to {self.high}.", "int_type")
        return int(value)

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.low, "maximum": self.high}
        if self.high > 2**31 - 1:
            schema["format"] = "int64"
        return schema


class Usd(Field[float | None]):
    """An amount in US dollars: a JSON number from 0 to MAX_USD — the one declaration of a dollar amount (a spend, a
    price, a spend cap). ``rounded``: kept to 6 decimals as the policies store it, and a non-zero amount that rounds
    to 0 is refused (a spend cap of 1e-9 would block every charged call; a price of it would make a tool free)."""

    ROUNDED = "Kept to 6 decimals: a non-zero amount that rounds to 0 (1e-9) is refused."

    def __init__(self, *, rounded: bool = False, **kwargs: Any) -> None:
        if rounded:
            kwargs.setdefault("description", self.ROUNDED)
        super().__init__(**kwargs)
        self.rounded = rounded

    def parse(self, value: Any) -> float:
        if json_number(value, 0, MAX_USD) is None:
            raise self.fail(f"Must be a number from 0 to {MAX_USD:,}.", "float_type")
        if not self.rounded:
            return value  # an int or a float, as sent
        amount = round(float(value), 6)  # amounts are stored to the millionth of a dollar
        if amount == 0 and value != 0:
            raise Invalid(
                "Rounds to 0 (amounts are kept to 6 decimals): write 0, or at least 0.000001.", "greater_than_equal"
            )
        return amount

    def openapi(self) -> dict[str, Any]:
        return {"type": "number", "format": "double", "minimum": 0, "maximum": MAX_USD}


class Boolean(Field[bool | None]):
    """A JSON boolean, nothing else (``"yes"``, 1 and ``"true"`` are refused)."""

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail("Must be true or false.", "bool_type")
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Choice(Field[T]):
    """One of ``choices``. With ``max_length`` the value is first checked as ``Text`` (a required string of at most
    that many characters), and ``unknown`` words the refusal of another string. In the schema: drf-spectacular's
    enum component (``TemplateEnum``, ``RiskLevelEnum``…). A required one is a ``Choice[str]``, any other a
    ``Choice[str | None]``."""

    @overload
    def __init__(
        self: Choice[str],
        choices: Iterable[str],
        *,
        required: Literal[True],
        max_length: int | None = None,
        unknown: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Choice[str | None],
        choices: Iterable[str],
        *,
        required: Literal[False] = False,
        max_length: int | None = None,
        unknown: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> None: ...
    def __init__(
        self,
        choices: Iterable[str],
        *,
        max_length: int | None = None,
        unknown: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.choices = list(choices)
        self.text = Text(max_length, required=True) if max_length is not None else None
        self.unknown = unknown

    def parse(self, value: Any) -> T:
        if self.text is not None:
            value = self.text.parse(value)
        if value not in self.choices:
            message = self.unknown(value) if self.unknown else f"One of: {', '.join(self.choices)}."
            raise self.fail(message, "enum")
        return value  # one of the choices

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def serializer_field(self) -> serializers.Field:
        return serializers.ChoiceField(
            choices=self.choices, required=self.required, allow_null=self.nullable, help_text=self.description
        )


class Day(Field[date | None]):
    """A day as ``YYYY-MM-DD`` (a query parameter: the empty string is absent)."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> date | None:
        return super().clean(check, loc, None if value == "" else value)

    def parse(self, value: Any) -> date:
        try:
            # fullmatch first: Python 3.11's fromisoformat also reads ISO week dates ("2026-W01-1").
            if isinstance(value, str) and re.fullmatch(DAY_PATTERN, value):
                return date.fromisoformat(value)
        except ValueError:
            pass
        raise Invalid(f"Not a day: {str(value)[:40]!r}; expected YYYY-MM-DD.", "date_from_datetime_parsing")

    def openapi(self) -> dict[str, Any]:
        return {"type": "string", "format": "date", "pattern": DAY_PATTERN}


class JsonObject(Field[dict[str, Any] | None]):
    """A JSON object of at most ``max_bytes`` bytes (compact UTF-8 JSON; None: no cap of its own). ``canonical``:
    it is hashed later (a result's or the args' hash), so what RFC 8785 cannot encode is refused here.
    ``shape``: the body that documents its keys in the schema, when they are checked elsewhere."""

    CANONICAL = (
        "Numbers must fit JSON's safe range (integers up to ±2^53-1, finite floats); send bigger ones as strings."
    )

    def __init__(
        self,
        max_bytes: int | None = None,
        *,
        canonical: bool = False,
        shape: type[Body] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_bytes, self.canonical, self.shape = max_bytes, canonical, shape

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail("Must be a JSON object.", "dict_type")
        if self.max_bytes is not None:
            size = len(_compact_json(value).encode())
            if size > self.max_bytes:
                raise Invalid(f"At most {self.max_bytes} bytes of JSON (got {size}).", "too_long")
        if self.canonical:
            try:
                rfc8785.dumps(value)
            except (rfc8785.CanonicalizationError, ValueError, TypeError):
                raise Invalid(self.CANONICAL, "value_error") from None
        return value

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {}}

    def serializer_field(self) -> serializers.Field:
        if self.shape is None:
            return super().serializer_field()
        return self.shape.serializer(required=self.required, allow_null=self.nullable, help_text=self.description)


B = TypeVar("B", bound="Body")


class Nested(Field[B | None]):
    """A JSON object (``JsonObject``'s checks: ``max_bytes``, ``canonical``) whose keys are the fields of ``body``,
    checked where they are: problems at ``<loc>.<field>``. The value kept is the nested body. With ``invalid``, any
    problem inside is that one message at ``<loc>`` instead."""

    def __init__(self, body: type[B], max_bytes: int | None = None, *, canonical: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body = body
        self.object = JsonObject(
            max_bytes,
            canonical=canonical,
            invalid=self.invalid or body.not_object,
            required=self.required,
            nullable=self.nullable,
        )

    def clean(self, check: BodyCheck, loc: str, value: Any) -> B | None:
        data = self.object.clean(check, loc, value)
        if data is None:
            return None
        if self.invalid is None:
            return self.body.fill(check, data, loc)
        inner = BodyCheck({}, set())
        body = self.body.fill(inner, data, loc)
        if inner.errors:
            check.fail(loc, *self.invalid)
            return None
        return body

    def parse(self, value: Any) -> B:
        inner = BodyCheck({}, set())
        body = self.clean(inner, self.name, value)
        if body is None:
            first = next(iter(inner.errors.values()), [None])[0]
            raise Invalid(str(first), first.code) if first is not None else Invalid(*self.body.not_object)
        return body

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {} if not self.body.strict else False}

    def serializer_field(self) -> serializers.Field:
        return self.body.serializer(required=self.required, allow_null=self.nullable, help_text=self.description)


class ListOf(Field[list[B] | None]):
    """A JSON list of at most ``max_items`` objects, each one a ``body`` (problems at ``<loc>.<index>``). The value
    kept: the bodies of the items that are objects."""

    def __init__(
        self,
        body: type[B],
        *,
        max_items: int,
        not_list: Message,
        too_long: Callable[[int], Message],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.body, self.max_items, self.not_list, self.too_long = body, max_items, not_list, too_long

    def clean(self, check: BodyCheck, loc: str, value: Any) -> list[B] | None:
        items = super().clean(check, loc, value)
        if items is None:
            return None
        out: list[B] = []
        for index, item in enumerate(items):
            where = f"{loc}.{index}"
            if not isinstance(item, dict):
                check.fail(where, *self.body.not_object)
                continue
            out.append(self.body.fill(check, item, where))
        return out

    def parse(self, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(*self.not_list)
        if len(value) > self.max_items:
            raise Invalid(*self.too_long(len(value)))
        return value

    def openapi(self) -> dict[str, Any]:  # pragma: no cover - the serializer field below is the schema
        return {"type": "array", "maxItems": self.max_items}

    def serializer_field(self) -> serializers.Field:
        return serializers.ListField(
            child=self.body.serializer(),
            required=self.required,
            allow_null=self.nullable,
            max_length=self.max_items,
            help_text=self.description,
        )


class Ignored(Field[None]):
    """A field the body accepts and ignores (the SDK sends the path's agent id in the body too)."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> None:
        return None

    def schema(self) -> dict[str, Any]:
        return {"description": self.description} if self.description else {}


# --- the serializer drf-spectacular reads ---------------------------------------------------------------------------


class SchemaField(serializers.Field):
    """A serializer field that only carries a JSON Schema (``openapi``) for drf-spectacular; bodies validate
    themselves. A keyword argument, so DRF's copy of declared fields keeps it."""

    def __init__(self, *, openapi: dict[str, Any], **kwargs: Any) -> None:
        self.openapi = openapi
        super().__init__(**kwargs)


def _ecma_escapes(schema: Any) -> Any:
    r"""A copy of ``schema`` whose patterns write ``\xHH`` as ``\u00HH``, as drf-spectacular writes the pattern of
    a serializer field's RegexValidator (both dialects read either)."""
    if isinstance(schema, dict):
        return {
            key: value.replace(r"\x", r"\u00") if key == "pattern" and isinstance(value, str) else _ecma_escapes(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_ecma_escapes(item) for item in schema]
    return schema


class SchemaFieldExtension(OpenApiSerializerFieldExtension):
    """drf-spectacular's schema of a ``SchemaField``: the one it carries (a copy: the schema's post-processing
    edits it)."""

    target_class = SchemaField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return _ecma_escapes(self.target.openapi)


# --- bodies ---------------------------------------------------------------------------------------------------------


class Body:
    """A request body (or a query string, or an object inside a body): declared fields, parsed in their order.

    Class settings: ``strict`` (unknown fields are refused; a body that keeps them has them in ``extra``),
    ``partial`` (only the fields sent are checked, in the order sent, an unknown one where it stands: a merge
    update whose null clears a field), ``not_object`` (the problem of a value that is no JSON object), and
    ``openapi_extra`` (schema keywords a field cannot express: onceonly_site/openapi.py's AutoSchema adds them).
    A parsed body has each field's value as an attribute, ``sent`` (the declared fields present) and ``raw``.
    """

    strict: ClassVar[bool] = True
    partial: ClassVar[bool] = False
    not_object: ClassVar[Message] = ("The request body must be a JSON object.", "type_error")
    openapi_extra: ClassVar[dict[str, Any]] = {}
    schema_description: ClassVar[str | None] = None  # the component's description (a strict one says so itself)

    fields: ClassVar[dict[str, Field[Any]]] = {}
    serializer: ClassVar[type[serializers.Serializer]]
    _allowed: ClassVar[frozenset[str]] = frozenset()
    _plan: ClassVar[tuple[tuple[str, Field[Any], Any, Any], ...]] = ()
    _known: ClassVar[frozenset[str] | None] = None  # the names BodyCheck refuses others than (None: it keeps them)

    _cross: ClassVar[bool] = False  # the class has a ``clean`` of its own

    raw: dict[str, Any]
    extra: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field[Any]] = {}
        for klass in reversed(cls.__mro__):
            fields.update((name, value) for name, value in vars(klass).items() if isinstance(value, Field))
        cls.fields = fields
        cls._allowed = frozenset(fields)
        # (name, field, hook, the value of an absent field when nothing needs to be checked: else MISSING)
        cls._plan = tuple(
            (name, field, hook, field.default if hook is None and not field.required else MISSING)
            for name, field in fields.items()
            for hook in [getattr(cls, f"clean_{name}", None)]
        )
        cls._known = cls._allowed if cls.strict and not cls.partial else None
        cls._cross = cls.clean is not Body.clean
        attrs: dict[str, Any] = {name: field.serializer_field() for name, field in fields.items()}
        attrs.update(__module__=cls.__module__, __qualname__=cls.__name__, openapi_extra=cls.openapi_extra)
        if cls.schema_description:
            attrs["__doc__"] = cls.schema_description
        base = StrictSerializer if cls.strict else serializers.Serializer
        cls.serializer = type(cls.__name__, (base,), attrs)

    @classmethod
    def parse(cls, data: Any, *, query: bool = False) -> Self:
        """``data`` checked: the parsed body, or one 422 (``query``: about query parameters) naming every problem.
        Unknown fields are reported first, by name; then the fields' problems in the order they are declared."""
        if not isinstance(data, dict):
            problem = serializers.ErrorDetail(cls.not_object[0], code=cls.not_object[1])
            raise (QueryValidationError if query else exceptions.ValidationError)({"non_field_errors": [problem]})
        known = cls._known
        check = BodyCheck(data, data.keys() if known is None else known, query=query)
        body = cls.fill(check, data, "")
        if check.errors:
            check.done()
        return body

    @classmethod
    def fill(cls, check: BodyCheck, data: dict[str, Any], loc: str) -> Self:
        """The body of ``data`` (an object found at ``loc``; "" for a whole body, whose unknown fields the
        ``BodyCheck`` has reported), its problems reported to ``check``."""
        prefix = ""
        if loc:
            prefix = f"{loc}."
            if cls._known is not None and (unknown := sorted(data.keys() - cls._known)):
                cls.refuse_unknown(check, loc, unknown)
        body = object.__new__(cls)  # no __init__: the values go straight into __dict__
        values = body.__dict__
        if cls.partial:
            for name, value in data.items():
                field = cls.fields.get(name)
                if field is None:
                    cls.refuse_unknown(check, loc, [name])
                elif not isinstance(field, Ignored):
                    values[name] = None if value is None else field.clean(check, prefix + name, value)
            values["_sent"] = frozenset(values)
        else:  # check-lock's hot path: one call per field sent, the defaults of the others without any
            get = data.get
            for name, field, hook, absent in cls._plan:
                value = get(name, MISSING)
                if value is MISSING and absent is not MISSING:
                    values[name] = absent
                    continue
                where = prefix + name if prefix else name
                value = field.clean(check, where, value)
                if hook is not None and value is not None:
                    value = hook(body, check, where, value)
                values[name] = value
        values["raw"] = data
        if not cls.strict:
            allowed = cls._allowed
            values["extra"] = {name: value for name, value in data.items() if name not in allowed}
        if cls._cross:
            body.clean(check, prefix)
        return body

    @classmethod
    def refuse_unknown(cls, check: BodyCheck, loc: str, names: list[str]) -> None:
        """Report the unknown fields ``names`` of an object at ``loc`` (a whole body's: BodyCheck's constructor)."""
        for name in names:
            check.fail(f"{loc}.{name}" if loc else name, "Unknown field.", "extra_forbidden")

    def clean(self, check: BodyCheck, prefix: str) -> None:
        """Rules across fields, after each field is checked (report with ``check.fail``; the locations of a nested
        body's fields start with ``prefix``)."""

    @property
    def sent(self) -> frozenset[str]:
        """The declared fields present in the body (absent ones have their default)."""
        values = self.__dict__
        return values["_sent"] if "_sent" in values else self._allowed & self.raw.keys()

    def changes(self) -> dict[str, Any]:
        """The fields sent, with their values (a partial body's in the order sent, where null means "clear")."""
        sent = self.sent
        return {name: value for name, value in self.__dict__.items() if name in sent}

    @classmethod
    def parameters(cls, location: ParameterLocation = OpenApiParameter.QUERY) -> list[OpenApiParameter]:
        """The fields as OpenAPI parameters (a query string declared as a body)."""
        out = []
        for name, field in cls.fields.items():
            schema = field.schema()
            description = schema.pop("description", None)
            schema.pop("nullable", None)
            out.append(OpenApiParameter(name, schema, location, required=field.required, description=description))
        return out
