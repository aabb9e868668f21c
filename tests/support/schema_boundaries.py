"""Boundary requests derived from the OpenAPI schema, for tests/test_schema_agrees.py.

For every constraint the schema states on a ``/v1`` request — a body field at any depth, a query or a path
parameter — this module builds requests that differ from an otherwise-valid base request in that one place:

* **edge**: a value AT the constraint (the longest string, the largest number, each enum value, null where
  nullable…), which the schema allows;
* **beyond**: a value JUST PAST it (one character more, the next float, a field left out, an unknown field, a wrong
  type…), which the schema forbids;
* **unstated**: where the schema states NO bound (no maxLength, no maximum, no minLength, no type…: the constraint
  reads ``maxLength=none``), a value far past any bound the server could reasonably hold, which the schema therefore
  allows.

Each value is checked against the schema itself with ``jsonschema`` before it is used (an edge value must validate,
a beyond value must not; a string past a length or a pattern passes once that keyword is set aside, so it breaks
that rule alone), so the expectations come from the schema and only the server's answers are observed. The base
bodies are the schema's required fields with simple valid values; ``Overrides`` supplies what the schema alone
cannot (state the server needs, a relation between fields that JSON Schema states as ``anyOf``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema


class _Missing:
    def __repr__(self) -> str:
        return "<left out>"


MISSING: Any = _Missing()  # a field or parameter left out of the request
CANNOT: Any = object()  # what a builder answers when the seeds give no value of the kind asked for
UNKNOWN_FIELD = "schema_unknown_field"
ADDITIONAL_KEY = "send_email"  # the key a free-form object's constrained values are put under
TOOL_URL = "http://127.0.0.1:9/schema"  # loopback, where nothing listens (the tests allow private tool URLs)
# Simple valid strings the generator tries, in order, before padding one to a length ("a" is valid everywhere).
SEEDS = ("schema-ok", "agent:schema-ok", TOOL_URL, date.today().isoformat(), "hmac_sha256")
# Strings that break common patterns: inner whitespace, a control, a bidi override, a zero-width space…
VIOLATORS = ("a b", "a\x01b", "a\u202eb", "a\u200bb", " ", "a/b", "a!b", "\u00e9", "x")
NOT_AN_OPTION = "schema-not-an-option"
FAR_LENGTH = 100_000  # an "unstated" string: far past any limit a field could have, well under the 2.5 MiB body cap
FAR_ITEMS = 10_000
FAR_NUMBER = 10**15
# Why the walk leaves a constraint without a value (Walker.unexercised; tests/test_schema_agrees.py allows these).
NO_SEED = "the seeds give no such value"
EMPTY_SEGMENT = "an empty path segment is another URL: no route takes it, whatever the parameter's rules"
FIELD_RULE = "a rule between fields (an object's anyOf): no generic violating value"
_FORMATS = jsonschema.FormatChecker()
_ANNOTATIONS = {"nullable", "description", "example", "default", "readOnly", "writeOnly", "title", "deprecated"}


# --- the schema ------------------------------------------------------------------------------------------------


def generated_schema() -> dict[str, Any]:
    """The OpenAPI document as ``/api/schema/`` serves it (drf-spectacular's generator, rendered to plain JSON)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(schema, renderer_context={}))


def resolve(node: Any, components: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` inlined and every ``allOf`` merged into its parent (drf-spectacular writes a
    nullable reference as ``allOf: [$ref]`` + ``nullable``)."""
    if isinstance(node, list):
        return [resolve(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = resolve(components[node["$ref"].rsplit("/", 1)[-1]], components)
        return {**target, **{k: resolve(v, components) for k, v in node.items() if k != "$ref"}}
    out = {k: resolve(v, components) for k, v in node.items()}
    for part in out.pop("allOf", []):
        out = {**part, **out}
    return out


def to_jsonschema(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema draft 4 (``nullable`` becomes ``anyOf [.., null]``)."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value)
        elif key in ("oneOf", "anyOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        elif key not in _ANNOTATIONS:
            out[key] = value
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out


def accepts(node: dict[str, Any], value: Any) -> bool:
    """Does the schema allow ``value``? (patterns as ``re.search``, formats as jsonschema checks them)."""
    return jsonschema.Draft4Validator(to_jsonschema(node), format_checker=_FORMATS).is_valid(value)


def without(node: dict[str, Any], *keywords: str) -> dict[str, Any]:
    """``node`` without ``keywords`` at its own level (not in nested properties)."""
    return {k: v for k, v in node.items() if k not in keywords}


def accepts_ignoring(node: dict[str, Any], value: Any, keywords: tuple[str, ...]) -> bool:
    """Would the schema allow ``value`` but for ``keywords``? For a union, in one of its alternatives (relaxing
    ``maxLength: 0`` in an "or empty" alternative would let anything through the other)."""
    if not keywords:
        return accepts(node, value)
    alts, _ = _alternatives(node)
    return any(accepts(without(alt, *keywords), value) for alt in alts)


def _alternatives(node: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The value alternatives of ``node`` (its oneOf/anyOf when they are alternatives of the value, not an object's
    rule between fields) without the null-only ones, and whether null is allowed."""
    alts = [node]
    if "type" not in node and "properties" not in node:
        alts = node.get("oneOf") or node.get("anyOf") or [node]
    kept = [alt for alt in alts if alt.get("enum") != [None]]
    return kept, bool(node.get("nullable")) or len(kept) < len(alts) or any(alt.get("nullable") for alt in kept)


def constrained(node: dict[str, Any]) -> bool:
    """Does the schema say anything a value must be? (``{"description": …}`` alone allows anything.)"""
    return any(k in node for k in ("type", "enum", "oneOf", "anyOf", "not", "properties", "pattern"))


# --- base values -----------------------------------------------------------------------------------------------


def _pad(seed: str, length: int) -> str:
    return seed[:length] if len(seed) >= length else seed + "a" * (length - len(seed))


def string_of_length(node: dict[str, Any], length: int, *, base: Any = None, ignoring: tuple[str, ...] = ()) -> Any:
    """A string of exactly ``length`` characters that ``node`` allows once ``ignoring`` is set aside (``CANNOT``
    if the seeds give none): the base value or a seed, cut or padded with "a"."""
    for seed in (base, *SEEDS) if isinstance(base, str) else SEEDS:
        candidate = _pad(seed, length)
        if accepts_ignoring(node, candidate, ignoring):
            return candidate
    return CANNOT


def base_value(node: dict[str, Any]) -> Any:
    """A simple value ``node`` allows: the first enum value, a seed string, the lowest number, true, an object of
    its required fields (and enough optional ones for minProperties), an empty list."""
    alts, _ = _alternatives(node)
    node = alts[0]
    if node.get("enum"):
        return next(v for v in node["enum"] if v is not None)
    kind = node.get("type")
    if kind == "string" or (kind is None and "properties" not in node):
        for seed in SEEDS:
            candidate = _pad(seed, max(len(seed), node.get("minLength", 0)))
            if accepts(node, candidate):
                return candidate
        raise AssertionError(f"no seed string fits {node}")
    if kind in ("integer", "number"):
        low = node.get("minimum")
        if low is None:
            return 0 if node.get("maximum", 0) >= 0 else node["maximum"]
        return low + 1 if node.get("exclusiveMinimum") else low
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    properties = node.get("properties", {})
    obj = {name: base_value(properties[name]) for name in node.get("required", [])}
    for name, sub in properties.items():
        if len(obj) >= node.get("minProperties", 0):
            break
        if constrained(sub):
            obj.setdefault(name, base_value(sub))
    return obj


# --- probes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One value for one place: ``where`` is the field's path (property names and list indexes) in the body, or
    ``(name,)`` for a parameter; ``value`` is the whole body (body probes) or the parameter's value."""

    where: tuple[str | int, ...]
    constraint: str
    side: str  # "edge" | "beyond" | "unstated"
    value: Any
    shown: str  # the probe's value in words, for failure messages


def _describe(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return f"a {len(value)}-character string {value[:12]!r}…"
    if isinstance(value, list) and len(value) > 3:
        return f"a list of {len(value)} items"
    if isinstance(value, dict) and len(value) > 3:
        return f"an object of {len(value)} properties"
    if value is MISSING:
        return "the field left out"
    return f"{json.dumps(value, ensure_ascii=True)[:60]}"


class Walker:
    """Generates the probes of one request part (a body, or one parameter)."""

    def __init__(self, *, location: str, bases: dict[tuple, Any] | None = None) -> None:
        self.location = location  # body | query | path
        self.bases = bases or {}  # where -> base value, for a nested object the schema alone gets wrong
        self.unexercised: list[tuple[tuple, str, str]] = []  # (where, constraint, why) the walk could not build

    def base_for(self, where: tuple, node: dict[str, Any]) -> Any:
        return copy.deepcopy(self.bases[where]) if where in self.bases else base_value(node)

    def _emit(
        self, node: dict[str, Any], where: tuple, constraint: str, side: str, value: Any, shown: str = ""
    ) -> Iterator[Probe]:
        """A probe, after checking the schema agrees with its side (the generator's own check, not the server's)."""
        if value is CANNOT:
            self.unexercised.append((where, f"{constraint}:{side}", NO_SEED))
            return
        allowed = accepts(node, value)
        verdict = "allows" if allowed else "refuses"
        assert allowed is (side != "beyond"), f"{where} {constraint} {side}: the schema {verdict} {value!r:.80}"
        yield Probe(where, constraint, side, value, shown or _describe(value))

    def walk(self, node: dict[str, Any], base: Any, where: tuple = ()) -> Iterator[Probe]:
        """Every probe of ``node`` and of what it contains; a probe's value is the whole value of ``node``."""
        yield from self._value_probes(node, base, where)
        if self.location != "body":
            return
        if "properties" in node or isinstance(node.get("additionalProperties"), dict):
            yield from self._object_probes(node, base if isinstance(base, dict) else {}, where)
        if node.get("type") == "array" and constrained(node.get("items", {})):
            items = node["items"]
            for probe in self.walk(items, self.base_for((*where, 0), items), (*where, 0)):
                if probe.value is not MISSING:
                    yield Probe(probe.where, probe.constraint, probe.side, [probe.value], probe.shown)

    def _object_probes(self, node: dict[str, Any], base: dict[str, Any], where: tuple) -> Iterator[Probe]:
        for name, sub in node.get("properties", {}).items():
            if not constrained(sub):
                continue  # documented as ignored: anything goes
            sub_base = base[name] if name in base else self.base_for((*where, name), sub)
            for probe in self.walk(sub, sub_base, (*where, name)):
                value = {k: v for k, v in base.items() if k != name}
                if probe.value is not MISSING:
                    value[name] = probe.value
                yield Probe(probe.where, probe.constraint, probe.side, value, probe.shown)
            if name in node.get("required", []):
                left_out = {k: v for k, v in base.items() if k != name}
                yield from self._emit(node, (*where, name), "required", "beyond", left_out, "the field left out")
        extra = node.get("additionalProperties", True)
        if extra is False:
            yield from self._emit(node, (*where, UNKNOWN_FIELD), "additionalProperties=false", "beyond",
                                  {**base, UNKNOWN_FIELD: 1}, f"an unknown field {UNKNOWN_FIELD!r}")  # fmt: skip
        elif isinstance(extra, dict) and constrained(extra):
            for probe in self.walk(extra, self.base_for((*where, ADDITIONAL_KEY), extra), (*where, ADDITIONAL_KEY)):
                if probe.value is not MISSING:
                    yield Probe(probe.where, probe.constraint, probe.side, {**base, ADDITIONAL_KEY: probe.value},
                                probe.shown)  # fmt: skip
        if "anyOf" in node and "properties" in node:
            self.unexercised.append((where, "anyOf:beyond", FIELD_RULE))

    def _value_probes(self, node: dict[str, Any], base: Any, where: tuple) -> Iterator[Probe]:
        alts, nullable = _alternatives(node)
        types = {alt["type"] for alt in alts if "type" in alt}
        typed = bool(types) or any("enum" in alt for alt in alts)
        if self.location == "body" and nullable:
            yield from self._emit(node, where, "nullable=true", "edge", None)
        elif self.location == "body" and typed:
            yield from self._emit(node, where, "nullable=false", "beyond", None)
        if self.location == "body" and not typed and "properties" in node:
            # No type: the schema allows any JSON value here, e.g. a string instead of the object it describes.
            yield from self._emit(node, where, "type=none", "unstated", "schema-not-an-object")
        kind = next(iter(types)) if len(types) == 1 else None
        if kind:
            yield from self._type_probes(node, kind, base, where)
        options = [v for alt in alts for v in alt.get("enum", []) if v is not None]
        if options:
            for option in options:
                yield from self._emit(node, where, f"enum={option}", "edge", option)
            yield from self._emit(node, where, "enum", "beyond", NOT_AN_OPTION)
        elif kind == "string":
            yield from self._string_probes(node, alts, base, where)
        elif kind in ("integer", "number"):
            yield from self._number_probes(node, kind, where)
        elif kind == "array":
            yield from self._count_probes(node, where, "Items", lambda n: self._items(node, n))
        elif kind == "object" and ("minProperties" in node or "maxProperties" in node):
            yield from self._count_probes(node, where, "Properties", lambda n: self._properties(node, base, n))
        if "not" in node:
            value = next((v for v in (*VIOLATORS, *SEEDS) if not accepts(node, v)), CANNOT)
            yield from self._emit(node, where, "not", "beyond", value)

    def _type_probes(self, node: dict[str, Any], kind: str, base: Any, where: tuple) -> Iterator[Probe]:
        low = node.get("minimum", 0)
        wrong: dict[str, list[Any]] = {
            "string": [12345],
            "integer": [low + 0.5] if self.location != "body" else ["1", low + 0.5],
            "number": ["1"],
            "boolean": ["true"],
            "object": [["x"]],
            "array": [{"x": 1}],
        }
        if self.location != "body" and kind != "integer":
            return  # a query or path value is text: only "not a whole number" can be sent
        for value in wrong[kind]:
            label = "fraction" if isinstance(value, float) else type(value).__name__
            yield from self._emit(node, where, f"type={kind}(got {label})", "beyond", value)

    def _string_probes(self, node: dict[str, Any], alts: list[dict], base: Any, where: tuple) -> Iterator[Probe]:
        if any(alt.get("format") == "date" for alt in alts):
            yield from self._emit(node, where, "format=date", "beyond", "2026-02-30")
        highs = [alt.get("maxLength") for alt in alts]
        if None not in highs:
            high = max(highs)
            yield from self._emit(node, where, f"maxLength={high}", "edge", string_of_length(node, high, base=base))
            yield from self._emit(node, where, f"maxLength={high}", "beyond",
                                  string_of_length(node, high + 1, base=base, ignoring=("maxLength",)))  # fmt: skip
        else:
            far = string_of_length(node, FAR_LENGTH, base=base)
            if far is not CANNOT:
                yield from self._emit(node, where, "maxLength=none", "unstated", far)
        low = min(alt.get("minLength", 0) for alt in alts)
        if low:
            yield from self._emit(node, where, f"minLength={low}", "edge", string_of_length(node, low, base=base))
            if self.location == "path" and low == 1:
                self.unexercised.append((where, "minLength=1:beyond", EMPTY_SEGMENT))
            else:
                shorter = string_of_length(node, low - 1, base=base, ignoring=("minLength", "pattern"))
                yield from self._emit(node, where, f"minLength={low}", "beyond", shorter)
        elif self.location != "path" and accepts(node, ""):
            yield from self._emit(node, where, "minLength=none", "unstated", "")
        if any("pattern" in alt for alt in alts):
            padded = [_pad(v, max(len(v), low)) for v in VIOLATORS]  # long enough for minLength
            value = next((v for v in padded if not accepts(node, v)
                          and accepts_ignoring(node, v, ("pattern", "format"))), CANNOT)  # fmt: skip
            yield from self._emit(node, where, "pattern", "beyond", value)

    def _number_probes(self, node: dict[str, Any], kind: str, where: tuple) -> Iterator[Probe]:
        whole = kind == "integer"
        for bound, sign, exclusive in (("maximum", 1, "exclusiveMaximum"), ("minimum", -1, "exclusiveMinimum")):
            limit = node.get(bound)
            if limit is None:
                far = sign * FAR_NUMBER if whole else float(sign * FAR_NUMBER)
                yield from self._emit(node, where, f"{bound}=none", "unstated", far)
                continue
            inward, outward = (limit - sign, limit + sign) if whole else (
                math.nextafter(limit, -sign * math.inf), math.nextafter(limit, sign * math.inf))  # fmt: skip
            edge, beyond = (inward, limit) if node.get(exclusive) else (limit, outward)
            name = f"{exclusive}={limit}" if node.get(exclusive) else f"{bound}={limit}"
            yield from self._emit(node, where, name, "edge", edge)
            yield from self._emit(node, where, name, "beyond", beyond)

    def _count_probes(self, node: dict, where: tuple, noun: str, build: Callable[[int], Any]) -> Iterator[Probe]:
        high, low = node.get(f"max{noun}"), node.get(f"min{noun}", 0)
        if high is not None:
            yield from self._emit(node, where, f"max{noun}={high}", "edge", build(high))
            yield from self._emit(node, where, f"max{noun}={high}", "beyond", build(high + 1))
        elif noun == "Items":
            yield from self._emit(node, where, f"max{noun}=none", "unstated", build(FAR_ITEMS))
        if low:
            yield from self._emit(node, where, f"min{noun}={low}", "edge", build(low))
            yield from self._emit(node, where, f"min{noun}={low}", "beyond", build(low - 1))

    def _items(self, node: dict[str, Any], count: int) -> list[Any]:
        item = base_value(node["items"])
        if isinstance(item, str):  # distinct names, where they fit
            distinct = [f"{item}{i}" for i in range(count)]
            if all(accepts(node["items"], name) for name in distinct[-1:]):
                return distinct
        return [copy.deepcopy(item) for _ in range(count)]

    def _properties(self, node: dict[str, Any], base: Any, count: int) -> Any:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return {f"{ADDITIONAL_KEY}_{i}": base_value(extra) for i in range(count)}
        names = [name for name, sub in node.get("properties", {}).items() if constrained(sub)]
        if count > len(names):
            return CANNOT
        return {name: (base or {}).get(name, base_value(node["properties"][name])) for name in names[:count]}


# --- operations and cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One /v1 operation (one form of a oneOf body is an operation of its own), with its base request."""

    id: str
    method: str
    path: str  # the template, /v1/tools/{name}
    path_params: dict[str, str]
    query: dict[str, Any]  # the required query parameters' base values
    body: Any  # the base body, MISSING when the operation takes none
    body_schema: dict[str, Any] | None
    parameters: dict[str, tuple[str, dict[str, Any], bool]]  # name -> (in, schema, required)
    # A oneOf body: the fields another form requires. Without one of this form's required fields the server may
    # read the body as the other form and name what that one misses.
    sibling_required: frozenset[str] = frozenset()

    def url(self, path_params: dict[str, str] | None = None, query: dict[str, Any] | None = None) -> str:
        path = self.path
        for name, value in (path_params or self.path_params).items():
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        query = self.query if query is None else query
        return f"{path}?{urlencode({k: str(v) for k, v in query.items()})}" if query else path


@dataclass(frozen=True)
class Case:
    operation: Operation
    location: str  # body | query | path (| base: the base request itself)
    probe: Probe

    @property
    def id(self) -> str:
        where = ".".join(str(part) for part in self.probe.where) or "<root>"
        return f"{self.operation.id}:{self.location}.{where}:{self.probe.constraint}:{self.probe.side}"

    def request(self, state: dict[str, Any] | None = None) -> tuple[str, str, bytes | None]:
        """(method, url, JSON body or None) of the probe: the base request with the probe's value in its place.
        ``state``: top-level body fields whose base value is replaced by one only the server can give (a lease_id),
        unless the probe is about that field."""
        op, probe = self.operation, self.probe
        path_params, query, body = dict(op.path_params), dict(op.query), op.body
        if self.location == "body":
            body = probe.value
        elif self.location != "base":
            target = path_params if self.location == "path" else query
            if probe.value is MISSING:
                target.pop(probe.where[0], None)
            else:
                target[probe.where[0]] = probe.value
        for name, value in (state or {}).items():
            touched = self.location == "body" and probe.where[:1] == (name,)
            if isinstance(body, dict) and not touched and body.get(name) == op.body.get(name):
                body = {**body, name: value}
        data = None if body is MISSING else json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        return op.method, op.url(path_params, query), data


def base_case(operation: Operation) -> Case:
    """The operation's base request, unchanged."""
    return Case(operation, "base", Probe((), "base", "edge", None, "the base request"))


@dataclass
class Overrides:
    """What the schema alone cannot give a valid base request. Keys are operation ids (``op[Form]`` for a form of
    a oneOf body)."""

    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # merged over the schema's base body
    nested: dict[tuple[str, tuple], Any] = field(default_factory=dict)  # (op, where) -> base of a nested object


def operations(schema: dict[str, Any], overrides: Overrides) -> list[Operation]:
    components = schema["components"]["schemas"]
    out = []
    for path, methods in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            parameters = {p["name"]: (p["in"], resolve(p.get("schema", {}), components), bool(p.get("required")))
                          for p in operation.get("parameters", [])}  # fmt: skip
            path_params = {name: base_value(node) for name, (where, node, _) in parameters.items() if where == "path"}
            query = {name: base_value(node) for name, (where, node, required) in parameters.items()
                     if where == "query" and required}  # fmt: skip
            common = {"method": method.upper(), "path": path, "path_params": path_params, "query": query,
                      "parameters": parameters}  # fmt: skip
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                out.append(Operation(id=operation["operationId"], body=MISSING, body_schema=None, **common))
                continue
            raw = content["schema"]
            named = components[raw["$ref"].rsplit("/", 1)[-1]] if "$ref" in raw else raw
            forms = named.get("oneOf") if "properties" not in named else None
            if forms is None:
                forms, ids = [raw], [operation["operationId"]]
            else:
                ids = [f"{operation['operationId']}[{f['$ref'].rsplit('/', 1)[-1].removesuffix('Request')}]"
                       for f in forms]  # fmt: skip
            resolved = [resolve(form, components) for form in forms]
            for op_id, node in zip(ids, resolved, strict=True):
                siblings = frozenset(
                    name for other in resolved if other is not node for name in other.get("required", [])
                )
                body = {**base_value(node), **overrides.bodies.get(op_id, {})}
                out.append(Operation(id=op_id, body=body, body_schema=node, sibling_required=siblings, **common))
    return out


def cases(ops: list[Operation], overrides: Overrides) -> tuple[list[Case], list[tuple[str, tuple, str, str]]]:
    """Every probe of every operation, and what the walk could not exercise: (operation, where, constraint, why)."""
    out: list[Case] = []
    unexercised: list[tuple[str, tuple, str, str]] = []
    for op in ops:
        walkers = []
        if op.body_schema is not None:
            bases = {where: value for (op_id, where), value in overrides.nested.items() if op_id == op.id}
            walker = Walker(location="body", bases=bases)
            walkers.append(walker)
            out.extend(Case(op, "body", probe) for probe in walker.walk(op.body_schema, op.body))
        for name, (where, node, required) in op.parameters.items():
            walker = Walker(location=where)
            walkers.append(walker)
            base = op.path_params[name] if where == "path" else op.query.get(name, base_value(node))
            out.extend(Case(op, where, probe) for probe in walker.walk(node, base, (name,)))
            if where == "query" and required:
                out.append(Case(op, where, Probe((name,), "required", "beyond", MISSING, "the parameter left out")))
        for walker in walkers:
            unexercised.extend((op.id, w, constraint, why) for w, constraint, why in walker.unexercised)
    seen: dict[str, int] = {}
    for case in out:
        seen[case.id] = seen.get(case.id, 0) + 1
    assert all(n == 1 for n in seen.values()), [name for name, n in seen.items() if n > 1]
    return out, unexercised


# --- reading the answer ------------------------------------------------------------------------------------------


def normalised_loc(loc: list[Any]) -> list[str]:
    """A 422 item's loc as path parts: the server writes nested fields both as list items
    (``["body", "auth", "secret"]``) and dotted (``["body", "metadata.actions.0.spend_usd"]``)."""
    parts: list[str] = []
    for index, part in enumerate(loc):
        parts.extend(str(part).split(".") if index and isinstance(part, str) else [str(part)])
    return parts


def names_field(
    loc: list[Any],
    location: str,
    where: tuple,
    also: frozenset[str] = frozenset(),
    flattened: frozenset[str] = frozenset(),
) -> bool:
    """Does a 422 item's loc point at the probed field: the field itself, the field that holds it (a list's or an
    object's problem reported on the list or object), or a part of it? ``also``: top-level fields that count too.
    ``flattened``: top-level objects whose fields the server documents as reported at their own names (a template's
    ``overrides`` are policy fields, their problems at ``["body", "<field>"]``: docs/api.md)."""
    parts = normalised_loc(loc)
    if not parts or parts[0] != location:
        return False
    if len(where) > 1 and str(where[0]) in flattened and names_field(loc, location, where[1:], also):
        return True
    rest, target = parts[1:], [str(part) for part in where]
    if not target:
        return True  # the body as a whole: any item is about it
    if not rest:
        return False  # the body as a whole is not the field
    if rest[:1] and rest[0] in also:
        return True
    shorter = min(len(rest), len(target))
    return rest[:shorter] == target[:shorter]
