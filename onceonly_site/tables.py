"""Dashboard data tables, declared per page: search, facets, sortable columns, totals and pagination, all read from
(and written back into) the URL query, so a filtered, sorted page is a link that can be shared and reloaded.

A view declares a :class:`Table` once (columns with the ORM orderings they sort by, the fields the search box looks
in, the facets) and binds it to a request and a queryset::

    bound = AGENTS.bind(request, queryset, suggestions={"agent": [...]})
    return render(request, "…", {"table": bound})

The templates ``_table_toolbar.html`` (search box, facets with ``<datalist>`` suggestions, active-filter chips,
Clear), ``_table_head.html`` (sortable header cells with ``aria-sort``) and ``_table_pager.html`` (totals, page
links) render it. URL parameters (docs/operations.md, "Dashboard tables"): ``q`` (search), ``sort`` (a column key,
``-key`` for descending), one parameter per facet, ``page`` (offset tables) or ``before``/``after`` (keyset).

Only whitelisted column keys sort, always with a unique tiebreaker (stable pages); values that make no sense (an
unknown sort, a page that is not a number, a date that is not a date, a value too long or holding control
characters) are ignored and said so on the page — never a 500. Imports Django only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, QueryDict
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

SEARCH = "q"
SORT = "sort"
PAGE = "page"
MAX_VALUE = 256  # characters of a search or facet value; identifiers are at most 256 long
MAX_PAGE = 10**6


@dataclass(frozen=True)
class Column:
    """A header cell. ``order``: the ORM orderings that sort it ascending (empty: not sortable); descending flips
    each. ``first``: the direction of the first click ("desc" suits times and amounts). ``nulls_last``: rows
    without a value (never called, no price) come last in both directions, on every database (PostgreSQL puts
    NULL first when descending, SQLite first when ascending); only for nullable fields of small tables or
    annotations — an explicit NULLS LAST keeps PostgreSQL from reading a plain index backwards."""

    key: str
    label: str
    order: tuple[str, ...] = ()
    first: str = "asc"
    css: str = ""
    nulls_last: bool = False

    @property
    def sortable(self) -> bool:
        return bool(self.order)


@dataclass(frozen=True)
class Facet:
    """A filter named by its URL parameter. ``lookup``: the ORM lookup its value is given to
    (``tool__icontains``); or ``apply(queryset, value) -> queryset`` for anything else (ids resolved through a small
    table first, states computed in Python). ``choices``: the allowed values, as (value, label) — a ``<select>``;
    otherwise a text input with ``<datalist>`` suggestions (given at bind time). ``kind="datetime"``: a
    ``datetime-local`` input, the value parsed (UTC when it has no offset)."""

    name: str
    label: str
    lookup: str | None = None
    apply: Callable[[QuerySet, Any], QuerySet] | None = None
    choices: tuple[tuple[str, str], ...] = ()
    kind: str = "text"
    hint: str = ""


def _flip(ordering: str) -> str:
    return ordering[1:] if ordering.startswith("-") else f"-{ordering}"


def _clean_text(value: str) -> str | None:
    """A search or facet value, or None when it cannot be one: too long, or holding a control character (PostgreSQL
    refuses NUL in text; the others match nothing anyone typed)."""
    value = value.strip()
    if len(value) > MAX_VALUE or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value


def _parse_datetime(value: str) -> datetime | None:
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but impossible (2026-02-30)
        return None
    if parsed is None:
        return None
    try:  # a valid date whose UTC instant is outside years 1–9999 (0001-01-01T00:00+14:00) is no date either
        return make_aware(parsed, UTC) if is_naive(parsed) else parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


_TIME = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")


def exact(value: str) -> str | None:
    """A "contains" facet written ``=text`` asks for exactly ``text`` (``agent==bot``: bot, not also bot-2, as the
    overview's links ask): that text; else None."""
    return value[1:] if value.startswith("=") else None


def _end_of(parsed: datetime, text: str) -> datetime:
    """An inclusive upper bound at the precision it was written in: "20:57" is up to 20:57:59.999999, "20:57:10"
    up to 20:57:10.999999, so "From 20:57 To 20:57" is that minute (not the single instant 20:57:00)."""
    written = _TIME.search(text)
    if written is None or written.group(2):
        return parsed
    step = timedelta(seconds=1) if written.group(1) else timedelta(minutes=1)
    try:
        return parsed + step - timedelta(microseconds=1)
    except OverflowError:  # 9999-12-31T23:59: already the end of time
        return parsed


class Table:
    def __init__(
        self,
        *,
        columns: Sequence[Column],
        default_sort: str,
        noun: tuple[str, str],
        search: Sequence[str] = (),
        search_hint: str = "",
        facets: Sequence[Facet] = (),
        tiebreaker: str = "id",
        per_page: int = 25,
        keep: Sequence[str] = (),
        sort_note: str = "",
    ):
        self.columns = list(columns)
        self.by_key = {c.key: c for c in self.columns if c.sortable}
        assert default_sort.lstrip("-") in self.by_key, default_sort
        self.default_sort = default_sort
        self.noun = noun
        self.search = list(search)
        self.search_hint = search_hint
        self.facets = list(facets)
        self.tiebreaker = tiebreaker
        self.per_page = per_page
        self.keep = list(keep)  # other parameters of the page that links keep (a tab)
        # Why only some columns sort, when that is by design (the decision log: time only): shown with the toolbar
        # and in the notice of an unknown sort.
        self.sort_note = sort_note

    def bind(self, request: HttpRequest, *, suggestions: Mapping[str, Iterable[str]] | None = None) -> BoundTable:
        return BoundTable(self, request.GET, suggestions or {})


@dataclass
class FacetField:
    facet: Facet
    value: str  # as typed (shown in the input)
    suggestions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.facet.name

    @property
    def label(self) -> str:
        return self.facet.label

    @property
    def choices(self):
        return self.facet.choices

    @property
    def kind(self) -> str:
        return self.facet.kind

    @property
    def hint(self) -> str:
        return self.facet.hint


class BoundTable:
    """A table's state read from one query string, and the links that change it."""

    def __init__(self, table: Table, params: QueryDict, suggestions: Mapping[str, Iterable[str]]):
        self.table = table
        self.errors: list[str] = []
        self.state: dict[str, str] = {}  # the parameters in force, as they go into links
        self.values: dict[str, Any] = {}  # facet name → parsed value
        for name in table.keep:
            kept = params.get(name)  # the last value, as params[name] gives
            if kept:
                self.state[name] = kept
        q = params.get(SEARCH, "")
        self.q = ""
        if q:
            cleaned = _clean_text(q)
            if cleaned is None:
                self.errors.append(f"Search ignored: at most {MAX_VALUE} characters, no control characters.")
            elif cleaned:
                self.q = self.state[SEARCH] = cleaned
        self.fields: list[FacetField] = []
        for facet in table.facets:
            raw = params.get(facet.name, "")
            field_ = FacetField(facet, "", [str(s) for s in suggestions.get(facet.name, ())][:100])
            self.fields.append(field_)
            if not raw.strip():
                continue
            value = self._facet_value(facet, raw)
            if value is not None:
                self.values[facet.name] = value
                self.state[facet.name] = raw.strip()
                # A datetime-local input shows only YYYY-MM-DDTHH:MM:SS: a shared link's "2026-12-06 10:00+02:00"
                # is shown (and submitted again) as the same instant in UTC, not lost on the next Filter.
                if facet.kind == "datetime":
                    field_.value = value.astimezone(UTC).isoformat(timespec="seconds")[:19]
                else:
                    field_.value = raw.strip()
        sort = params.get(SORT, "")
        self.sort_key, self.descending = self._sort(table.default_sort)
        if sort and sort != table.default_sort:
            if sort.lstrip("-") in table.by_key and sort.count("-") <= 1:
                self.sort_key, self.descending = self._sort(sort)
                self.state[SORT] = sort
            else:
                self.errors.append(f"Unknown sort ignored: {table.sort_note or 'choose a column header.'}")
        self.page_number = 1
        page = params.get(PAGE, "")
        if page:
            if page.isascii() and page.isdigit() and len(page) <= 7 and 1 <= int(page) <= MAX_PAGE:
                self.page_number = int(page)
            else:
                self.errors.append("Page ignored: not a page number.")
        self.total: int | None = None
        self.total_capped = False
        self.rows: list[Any] = []
        self.pager: dict[str, Any] | None = None

    @staticmethod
    def _sort(sort: str) -> tuple[str, bool]:
        return sort.lstrip("-"), sort.startswith("-")

    def _facet_value(self, facet: Facet, raw: str) -> Any:
        value = _clean_text(raw)
        if value is None:
            self.errors.append(f"{facet.label} ignored: at most {MAX_VALUE} characters, no control characters.")
            return None
        if facet.choices and value not in {v for v, _ in facet.choices}:
            allowed = ", ".join(v for v, _ in facet.choices if v)
            self.errors.append(f"{facet.label} “{value}” ignored: choose one of {allowed}.")
            return None
        if facet.kind == "datetime":
            parsed = _parse_datetime(value)
            if parsed is None:
                self.errors.append(f"{facet.label} “{value}” ignored: not a date and time (YYYY-MM-DD HH:MM).")
            elif facet.lookup is not None and facet.lookup.endswith("__lte"):
                parsed = _end_of(parsed, value)
            return parsed
        return value

    # --- the query ------------------------------------------------------------------------------------------------

    def filter(self, queryset: QuerySet, *, search: bool = True) -> QuerySet:
        """The queryset narrowed by the search and the facets in force."""
        if search and self.q and self.table.search:
            condition = Q()
            for name in self.table.search:
                condition |= Q(**{f"{name}__icontains": self.q})
            queryset = queryset.filter(condition)
        for facet in self.table.facets:
            if facet.name not in self.values:
                continue
            value = self.values[facet.name]
            if facet.apply is not None:
                queryset = facet.apply(queryset, value)
            elif facet.lookup:
                contains = facet.lookup.endswith("__icontains")
                wanted = exact(value) if contains else None
                if wanted is not None:
                    queryset = queryset.filter(**{facet.lookup.removesuffix("__icontains"): wanted})
                else:
                    queryset = queryset.filter(**{facet.lookup: value})
        return queryset

    @property
    def ordering(self) -> list[Any]:
        column = self.table.by_key[self.sort_key]
        orders: list[Any] = [_flip(o) if self.descending else o for o in column.order]
        if column.nulls_last:
            orders = [
                F(o.lstrip("-")).desc(nulls_last=True) if o.startswith("-") else F(o).asc(nulls_last=True)
                for o in orders
            ]
        tie = _flip(self.table.tiebreaker) if self.descending else self.table.tiebreaker
        return [*orders, tie]

    def paginate(self, queryset: QuerySet, *, total: int | None = None) -> list[Any]:
        """Offset pagination of the ordered queryset: one COUNT (unless ``total`` is given) and one page query. A
        page past the last shows the last."""
        self.total = queryset.count() if total is None else total
        per_page = self.table.per_page
        pages = max(1, math.ceil(self.total / per_page))
        self.page_number = min(self.page_number, pages)
        offset = (self.page_number - 1) * per_page
        self.rows = list(queryset.order_by(*self.ordering)[offset : offset + per_page]) if self.total else []
        self.pager = {
            "pages": pages,
            "number": self.page_number,
            "first": offset + 1 if self.rows else 0,
            "last": offset + len(self.rows),
            "previous": self.url(page=self.page_number - 1) if self.page_number > 1 else None,
            "next": self.url(page=self.page_number + 1) if self.page_number < pages else None,
            "links": self._page_links(pages) if pages > 1 else [],
        }
        return self.rows

    def _page_links(self, pages: int) -> list[dict[str, Any]]:
        """First, last and the pages around the current one; None marks a gap."""
        wanted = sorted({1, pages, *range(max(1, self.page_number - 2), min(pages, self.page_number + 2) + 1)})
        links: list[dict[str, Any]] = []
        previous = 0
        for number in wanted:
            if number - previous > 1:
                links.append({"gap": True})
            links.append({"number": number, "url": self.url(page=number), "current": number == self.page_number})
            previous = number
        return links

    def set_total(self, total: int, *, capped: bool = False) -> None:
        self.total, self.total_capped = total, capped

    # --- links ----------------------------------------------------------------------------------------------------

    def url(self, **changes: Any) -> str:
        """``?…`` with the state in force, changed: a value of None drops a parameter; page 1 is left out."""
        state = dict(self.state)
        for name, value in changes.items():
            if value is None or value == "":
                state.pop(name, None)
            else:
                state[name] = str(value)
        if state.get(PAGE) == "1":
            del state[PAGE]
        return f"?{urlencode(state)}" if state else "?"

    @property
    def query(self) -> str:
        """The state as a query string, without a leading ``?`` (for links that add their own parameters)."""
        return self.url()[1:]

    @property
    def headers(self) -> list[dict[str, Any]]:
        out = []
        for column in self.table.columns:
            cell: dict[str, Any] = {"label": column.label, "css": column.css, "url": None, "aria_sort": None}
            if column.sortable:
                if column.key == self.sort_key:
                    cell["aria_sort"] = "descending" if self.descending else "ascending"
                    cell["arrow"] = "↓" if self.descending else "↑"
                    following = column.key if self.descending else f"-{column.key}"
                else:
                    following = f"-{column.key}" if column.first == "desc" else column.key
                cell["url"] = self.url(**{SORT: following, PAGE: None})
                if following == self.table.default_sort:
                    cell["url"] = self.url(**{SORT: None, PAGE: None})
            out.append(cell)
        return out

    @property
    def choice_links(self) -> dict[str, list[dict[str, Any]]]:
        """Per facet with choices, a link to each value (quick filters) that keeps the search, the other facets and
        the sort, back on page 1; ``current`` on the value in force."""
        return {
            facet.name: [
                {
                    "value": value,
                    "label": label,
                    "url": self.url(**{facet.name: value or None, PAGE: None}),
                    "current": self.state.get(facet.name, "") == value,
                }
                for value, label in facet.choices
            ]
            for facet in self.table.facets
            if facet.choices
        }

    @property
    def active(self) -> bool:
        return bool(self.q or self.values)

    @property
    def chips(self) -> list[dict[str, str]]:
        chips = []
        if self.q:
            chips.append({"label": "Search", "value": self.q, "remove": self.url(**{SEARCH: None, PAGE: None})})
        for facet in self.table.facets:
            if facet.name in self.values:
                shown = self.state[facet.name]
                label = dict(facet.choices).get(shown, shown) if facet.choices else shown
                chips.append(
                    {"label": facet.label, "value": label, "remove": self.url(**{facet.name: None, PAGE: None})}
                )
        return chips

    @property
    def clear_url(self) -> str:
        kept = {name: self.state[name] for name in (SORT, *self.table.keep) if name in self.state}
        return f"?{urlencode(kept)}" if kept else "?"

    @property
    def hidden(self) -> list[tuple[str, str]]:
        """Parameters the toolbar form carries along unchanged (the sort, a tab)."""
        return [(name, self.state[name]) for name in (SORT, *self.table.keep) if name in self.state]

    @property
    def total_text(self) -> str:
        if self.total is None:
            return ""
        singular, plural = self.table.noun
        if self.total_capped:
            return f"{self.total:,}+ {plural}"
        return f"{self.total:,} {singular if self.total == 1 else plural}"


def capped_count(queryset: QuerySet, cap: int) -> tuple[int, bool]:
    """How many rows match, counting no further than ``cap`` (one query: COUNT over a LIMITed subquery): (cap, True)
    when there are more."""
    counted = queryset.order_by().values("pk")[: cap + 1].count()
    return (cap, True) if counted > cap else (counted, False)


def keyset_page(
    queryset: QuerySet,
    *,
    order: tuple[str, str],
    size: int,
    before: tuple | None = None,
    after: tuple | None = None,
    descending: bool = True,
) -> tuple[list[Any], bool, bool]:
    """One page of a log in time order (``order``: two fields, the second unique: ``("ts", "id")``), from a cursor
    row's values: the ``size`` rows just older than ``before``, or just newer than ``after``, or the first ``size``
    (newest first when ``descending``, else oldest first). Each is one range scan of an index on the two fields, at
    any depth. Returns the rows in display order, and whether older and newer rows lie beyond them."""
    first, second = order
    if after is not None:
        travel_newer = True
        queryset = queryset.filter(**{f"{first}__gte": after[0]}).exclude(
            **{first: after[0], f"{second}__lte": after[1]}
        )
    elif before is not None:
        travel_newer = False
        queryset = queryset.filter(**{f"{first}__lte": before[0]}).exclude(
            **{first: before[0], f"{second}__gte": before[1]}
        )
    else:
        travel_newer = not descending
    ordering = (first, second) if travel_newer else (f"-{first}", f"-{second}")
    rows = list(queryset.order_by(*ordering)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if travel_newer == descending:  # fetched in the direction of travel, shown the other way round
        rows.reverse()
    older = more if not travel_newer else after is not None
    newer = more if travel_newer else before is not None
    return rows, older, newer
