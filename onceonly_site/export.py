"""Streaming exports of a log (decisions, runs, run events, audit entries) as CSV or JSON Lines, in bounded memory
(docs/api.md §"Exports"; docs/operations.md §"Exports").

A :class:`Source` names what is exported: a queryset already narrowed to one account and the table's filters, the
columns (ORM paths read with ``values_list``: no model instances, no related objects), and the time order. Rows are
read by keyset pagination on (time, id) — ``CHUNK`` rows per query, each query a range scan of the (account, time)
index from where the previous one stopped — and written out as they come by a ``StreamingHttpResponse``: memory
holds one chunk, whatever the number of rows (``make bench BENCH_ARGS="--only export"`` measures 1,000,000
decisions). No transaction is held open between chunks: a row written during the export is included if it falls
after the cursor. Imports Django only.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

CHUNK = 2000  # rows per query: one query per 2,000 rows, a few hundred kB of Python objects at a time
FLUSH = 64 * 1024  # characters buffered before a piece of the response is handed to the server
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
FORMULA_STARTS = frozenset("=+-@\t\r")


@dataclass(frozen=True)
class Column:
    """An exported column: its name in the file and the ORM path it is read from (``agent__agent_id``)."""

    name: str
    path: str


@dataclass
class Source:
    """One export: ``queryset`` (scoped and filtered), its ``columns``, the keyset ``order`` — a time field and the
    unique id, or the id alone — and the direction (newest first by default, as the tables show)."""

    name: str  # the file's stem: ``decisions`` → onceonly-decisions-<account>-<UTC time>.csv
    queryset: QuerySet
    columns: Sequence[Column]
    order: tuple[str, ...] = ("ts", "id")
    descending: bool = True
    errors: list[str] = field(default_factory=list)


def keyset_rows(source: Source, *, chunk: int = CHUNK) -> Iterator[tuple[Any, ...]]:
    """Every row of the source in its order, ``chunk`` rows per query. The cursor is the last row's (time, id): the
    next query asks for what lies strictly beyond it, ``time ≤ t AND NOT (time = t AND id ≥ i)`` newest first (a
    range of the time index, as tables.keyset_page reads a page)."""
    keys = source.order
    paths = [c.path for c in source.columns]
    ordering = [f"-{k}" for k in keys] if source.descending else list(keys)
    base = source.queryset.order_by(*ordering)
    cursor: tuple[Any, ...] | None = None
    while True:
        page = base
        if cursor is not None:
            page = page.filter(_beyond(keys, cursor, source.descending))
        batch = list(page.values_list(*keys, *paths)[:chunk])
        for row in batch:
            yield row[len(keys) :]
        if len(batch) < chunk:
            return
        cursor = batch[-1][: len(keys)]


def _beyond(keys: Sequence[str], cursor: tuple[Any, ...], descending: bool) -> Q:
    less, at_most = ("lt", "lte") if descending else ("gt", "gte")
    if len(keys) == 1:
        return Q(**{f"{keys[0]}__{less}": cursor[0]})
    first, second = keys
    return Q(**{f"{first}__{at_most}": cursor[0]}) & ~Q(
        **{first: cursor[0], f"{second}__{'gte' if descending else 'lte'}": cursor[1]}
    )


def _text(value: Any) -> str:
    """A CSV cell: times in ISO 8601 UTC, amounts as written, JSON as JSON, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        # Text an agent or operator chose (a tool name, a reason) that a spreadsheet would run as a formula: kept
        # as text with a leading apostrophe (OWASP's CSV injection advice). Numbers are never str here.
        return "'" + value
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: "0.010000", never a float's 0.01000000000000000020816
    return value


def csv_chunks(source: Source, rows: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow([c.name for c in source.columns])
    for row in rows:
        writer.writerow([_text(v) for v in row])
        if buffer.tell() >= FLUSH:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_chunks(source: Source, rows: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    names = [c.name for c in source.columns]
    parts: list[str] = []
    size = 0
    for row in rows:
        line = json.dumps(dict(zip(names, map(_json_value, row), strict=True)), ensure_ascii=False) + "\n"
        parts.append(line)
        size += len(line)
        if size >= FLUSH:
            yield "".join(parts)
            parts, size = [], 0
    yield "".join(parts)


ENCODERS: dict[str, Callable[[Source, Iterator[tuple[Any, ...]]], Iterator[str]]] = {
    "csv": csv_chunks,
    "jsonl": jsonl_chunks,
}


def filename(source: Source, account_id: int, fmt: str, now: datetime | None = None) -> str:
    stamp = (now or timezone.now()).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"onceonly-{source.name}-{account_id}-{stamp}.{fmt}"


def stream(source: Source, *, account_id: int, fmt: str, chunk: int = CHUNK) -> StreamingHttpResponse:
    """The export as a streamed download: ``Content-Disposition: attachment`` with a file name, no length (the body
    is written as it is read), never cached."""
    pieces = (piece.encode() for piece in ENCODERS[fmt](source, keyset_rows(source, chunk=chunk)) if piece)
    response = StreamingHttpResponse(pieces, content_type=FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename(source, account_id, fmt)}"'
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response
