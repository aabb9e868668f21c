"""/v1/export/…: the decision log, runs, a run's events and the operator audit log as streamed CSV or JSON Lines,
with the dashboard tables' filters (docs/api.md §"Exports"); /v1/legal-hold: the account's and its agents' legal
holds, set and cleared by admin-scoped keys (docs/operations.md §"Retention").

An export is a ``StreamingHttpResponse`` read in keyset chunks (onceonly_site/export.py): no page parameters, no
total, the whole filtered log in one download of bounded memory. Any key of the account may export (the data is the
account's, read-only, as the agent logs and approvals are); each request takes one rate-limit token, and exports
are not metered against the monthly quotas (they are reads).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from django.http import QueryDict, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from billing.models import Account
from governance import approval_api_selectors, holds, views
from governance.approval_api import REASON_RULES
from governance.models import Agent
from idempotency import views as idempotency_views
from onceonly_site import export
from onceonly_site.api import ApiProblem, QueryValidationError, body
from onceonly_site.bodies import AgentId, Body, Boolean, Text
from onceonly_site.identifiers import CONTROL, identifier_problem
from onceonly_site.openapi import IDENTIFIER_PATTERN, errors
from onceonly_site.tables import MAX_VALUE, SEARCH, SORT, Table


class _Stream(BaseRenderer):
    """Names a format for the negotiation only: the view answers a StreamingHttpResponse, never rendered."""

    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        raise NotImplementedError  # pragma: no cover - exports are streamed, errors rendered as JSON


class CsvRenderer(_Stream):
    media_type = export.MEDIA_TYPES["csv"]
    format = "csv"


class JsonLinesRenderer(_Stream):
    media_type = export.MEDIA_TYPES["jsonl"]
    format = "jsonl"


class _FormatOrAccept(DefaultContentNegotiation):
    """``?format=csv|jsonl`` chooses the file (else the ``Accept`` header: CSV for ``*/*``); another format is a 422
    at ``["query", "format"]``; an ``Accept`` of neither (nor JSON) is a 406."""

    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: Any = None) -> Any:
        renderers = list(renderers)
        wanted = request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        if wanted is not None and wanted not in export.FORMATS:
            problem = serializers.ErrorDetail(f"One of: {', '.join(export.FORMATS)}.", code="enum")
            raise QueryValidationError({self.settings.URL_FORMAT_OVERRIDE: [problem]})
        return super().select_renderer(request, renderers, format_suffix)


class _ExportView(APIView):
    """An export: the JSON of an error whatever was negotiated, the stream otherwise."""

    renderer_classes = [CsvRenderer, JsonLinesRenderer, JSONRenderer]
    content_negotiation_class = _FormatOrAccept

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response):  # an error: JSON, as everywhere (docs/api.md §"The error contract")
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    def format_of(self, request: Request) -> str:
        chosen = request.accepted_renderer.format
        return chosen if chosen in export.FORMATS else "jsonl"  # Accept: application/json → JSON Lines


def _check_params(params: QueryDict, allowed: set[str], source: export.Source, table: Table | None) -> None:
    """Unknown parameters, and the filter values the dashboard would ignore (said on its page), are a 422 naming
    them: an export never silently widens to rows that were not asked for."""
    problems: dict[str, list[Any]] = {}
    for name in sorted(set(params) - allowed):
        problems[name] = [serializers.ErrorDetail("Unknown parameter.", code="extra_forbidden")]
    for facet in table.facets if table is not None else ():
        raw = params.get(facet.name)  # the schema's rules, on the value as sent ("" is no filter)
        if raw is None:
            continue
        if facet.kind == "datetime" and not DATETIME.match(raw):
            message = "Not a date and time (YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS], an offset after the time)."
            problems[facet.name] = [serializers.ErrorDetail(message, code="invalid")]
        elif facet.choices and raw not in {value for value, _ in facet.choices}:
            listed = ", ".join(value for value, _ in facet.choices if value)
            problems[facet.name] = [serializers.ErrorDetail(f"One of: {listed} (or empty: any).", code="enum")]
    if table is not None and source.errors:
        labels = {SEARCH: "Search", SORT: "Unknown sort", **{f.name: f.label for f in table.facets}}
        for name, label in labels.items():
            said = [e for e in source.errors if e.startswith(label)]
            if said and params.get(name, ""):
                problems.setdefault(name, [serializers.ErrorDetail(said[0], code="invalid")])
    if problems:
        raise QueryValidationError(problems)


# What a From/To filter may look like (tables._parse_datetime refuses impossible dates on top): a day, a time to the
# minute, second or microsecond, an offset after a time (none: UTC).
DATETIME_PATTERN = r"^(?:\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?)?$"
DATETIME = re.compile(DATETIME_PATTERN)
# A search or "contains" value: anything without a control character (the middleware refuses those in any query).
CONTROL_FREE_PATTERN = rf"^[^{CONTROL.pattern[1:-1]}]*$"
FORMAT_PARAMETER = OpenApiParameter(
    "format",
    {"type": "string", "enum": list(export.FORMATS), "default": "csv"},
    description="`csv` (RFC 4180, a header row) or `jsonl` (one JSON object a line); else the Accept header.",
)


def _table_parameters(table: Table, time_key: str) -> list[OpenApiParameter]:
    """The query of an export: the format, and the table's search, facets and time sort (its URL parameters)."""
    out = [FORMAT_PARAMETER]
    if table.search or table.search_hint:
        out.append(
            OpenApiParameter(
                SEARCH,
                {"type": "string", "maxLength": MAX_VALUE, "pattern": CONTROL_FREE_PATTERN},
                description=f"Search (contains, ignoring case): {table.search_hint}.",
            )
        )
    for facet in table.facets:
        schema: dict[str, Any] = {"type": "string", "maxLength": MAX_VALUE, "pattern": CONTROL_FREE_PATTERN}
        if facet.choices:
            schema = {"type": "string", "enum": [value for value, _ in facet.choices]}  # "": any
        elif facet.kind == "datetime":
            schema = {"type": "string", "pattern": DATETIME_PATTERN}  # (at most 32 characters)
        hint = f" ({facet.hint}; `=text` matches exactly)" if facet.hint == "contains" else ""
        if facet.kind == "datetime":
            hint = " (ISO 8601: a day, or a time to the minute or second; UTC without an offset)"
        out.append(OpenApiParameter(facet.name, schema, description=f"{facet.label}{hint}, as the dashboard's filter."))
    out.append(
        OpenApiParameter(
            SORT,
            {"type": "string", "enum": [time_key, f"-{time_key}", ""]},
            description=f"`{time_key}`: oldest first; `-{time_key}` (the default): newest first.",
        )
    )
    return out


def _stream_response(
    request: Request,
    view: _ExportView,
    build: Callable[[int, QueryDict], export.Source],
    table: Table,
    sortable: str,
) -> StreamingHttpResponse:
    account_id = principal(request).account_id
    params = request.query_params
    allowed = {"format", SEARCH, SORT, *(f.name for f in table.facets)}
    source = build(account_id, params)
    sort = params.get(SORT, "")
    if sort not in ("", sortable, f"-{sortable}"):  # other columns sort pages, not exports (keyset on time)
        source.errors.append(f"Unknown sort ignored: an export is in time order ({sortable} or -{sortable}).")
    _check_params(params, allowed, source, table)
    return export.stream(source, account_id=account_id, fmt=view.format_of(request))


def _runs_source(account_id: int, params: QueryDict) -> export.Source:
    return idempotency_views.runs_export_source(Account(pk=account_id), params)


_STREAM = {
    (200, export.MEDIA_TYPES["csv"]): OpenApiResponse(OpenApiTypes.STR, description="A CSV file (streamed)."),
    (200, export.MEDIA_TYPES["jsonl"]): OpenApiResponse(OpenApiTypes.STR, description="JSON Lines (streamed)."),
}
_STREAMED = (
    " Streamed: no total and no pages; `Content-Disposition: attachment` names the file. Never the call's args "
    '(only `args_hash`). Columns: docs/api.md §"Exports".'
)


class DecisionsExportApi(_ExportView, FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="export_decisions",
        parameters=_table_parameters(views.DECISIONS_TABLE, "time"),
        responses=_STREAM,
        summary="The decision log as CSV or JSON Lines, with the decision timeline's filters (streamed)",
        description="The rows the dashboard's decision timeline shows for the same filters, newest first (`sort=time`:"
        " oldest first)." + _STREAMED,
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        return _stream_response(request, self, views.decisions_export_source, views.DECISIONS_TABLE, "time")


class RunsExportApi(_ExportView):
    @extend_schema(
        operation_id="export_runs",
        parameters=_table_parameters(idempotency_views.RUNS_TABLE, "started"),
        responses=_STREAM,
        summary="Keyed runs as CSV or JSON Lines, with the Runs table's filters (streamed)",
        description="Newest first (`sort=started`: oldest first); a run's params, actions and result are not "
        "exported." + _STREAMED,
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        return _stream_response(request, self, _runs_source, idempotency_views.RUNS_TABLE, "started")


class RunEventsExportApi(_ExportView):
    @extend_schema(
        operation_id="export_run_events",
        parameters=[
            FORMAT_PARAMETER,
            OpenApiParameter(
                "run_id",
                {"type": "string", "maxLength": 256, "pattern": IDENTIFIER_PATTERN},
                required=True,
                description="The timeline (as `GET /v1/runs/{run_id}`).",
            ),
        ],
        responses=_STREAM,
        summary="A run timeline's events as CSV or JSON Lines, in the order written (streamed)",
        description="An event's `data`, `extra` and `lease_id` are not exported; an unknown run id is an empty file."
        + _STREAMED,
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        params = request.query_params
        problems: dict[str, list[Any]] = {}
        for name in sorted(set(params) - {"format", "run_id"}):
            problems[name] = [serializers.ErrorDetail("Unknown parameter.", code="extra_forbidden")]
        run_id = params.get("run_id", "").strip()
        problem = "A run id is required." if not run_id else identifier_problem(run_id)
        if not problem and len(run_id) > 256:
            problem = "At most 256 characters."
        if problem:
            problems["run_id"] = [serializers.ErrorDetail(problem, code="invalid")]
        if problems:
            raise QueryValidationError(problems)
        account_id = principal(request).account_id
        source = idempotency_views.run_events_export_source(Account(pk=account_id), run_id)
        return export.stream(source, account_id=account_id, fmt=self.format_of(request))


class AuditExportApi(_ExportView):
    @extend_schema(
        operation_id="export_audit",
        parameters=_table_parameters(views.AUDIT_TABLE, "when"),
        responses=_STREAM,
        summary="The operator audit log as CSV or JSON Lines, with the audit page's filters (streamed)",
        description="Newest first (`sort=when`: oldest first), each entry with its chain hashes." + _STREAMED,
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        return _stream_response(request, self, views.audit_export_source, views.AUDIT_TABLE, "when")


# --- legal holds ---------------------------------------------------------------------------------------------------


class LegalHoldInput(Body):
    held = Boolean(required=True, description="true: put on legal hold; false: release the hold.")
    reason = Text(
        holds.MAX_REASON,
        required=True,
        rules=REASON_RULES,
        pattern=IDENTIFIER_PATTERN,
        description="Required, kept in the audit log: why the history must be kept, or no longer must. One line.",
    )
    agent_id = AgentId(required=False, description="An agent of the account to hold or release (else the account).")


_HOLD_FIELDS: dict[str, serializers.Field] = {
    "held": serializers.BooleanField(),
    "since": serializers.DateTimeField(allow_null=True),
    "reason": serializers.CharField(allow_null=True),
}
HoldItem = inline_serializer("LegalHoldState", _HOLD_FIELDS)
AgentHoldItem = inline_serializer("AgentLegalHold", {"agent_id": serializers.CharField(), **_HOLD_FIELDS})
LegalHoldOutput = inline_serializer(
    "LegalHolds",
    {
        "retention_days": serializers.IntegerField(help_text="Days the account's history is kept."),
        "account": HoldItem,
        "agents": serializers.ListField(child=AgentHoldItem, help_text="The agents on legal hold."),
        "changed": serializers.BooleanField(required=False, help_text="POST: false when it was already so."),
    },
)


def _hold(obj: Account | Agent) -> dict[str, Any]:
    state = holds.state(obj)
    return {
        "held": state.held,
        "since": state.since.isoformat() if state.since else None,
        "reason": state.reason or None,
    }


def _holds(account: Account) -> dict[str, Any]:
    agents = Agent.objects.filter(account=account, legal_hold_since__isnull=False).order_by("agent_id")
    return {
        "retention_days": holds.effective_retention_days(account),
        "account": _hold(account),
        "agents": [{"agent_id": agent.agent_id, **_hold(agent)} for agent in agents],
    }


class LegalHoldApi(APIView):
    @extend_schema(
        operation_id="legal_hold_get",
        responses=LegalHoldOutput,
        summary="The account's retention and legal holds (the account's, and its agents' on hold)",
    )
    def get(self, request: Request) -> Response:
        account = Account.objects.select_related("plan").get(pk=principal(request).account_id)
        return Response(_holds(account))

    @extend_schema(
        operation_id="legal_hold_set",
        request=LegalHoldInput.serializer,
        responses={200: LegalHoldOutput, **errors(404)},
        summary="Put the account or one agent on legal hold, or release it (admin key; audited with the reason)",
        description="Needs an admin-scoped API key: any other is refused with 403 `admin_key_required`. An unknown "
        "`agent_id` is a 404 `agent_not_found`. The change is audited (`governance.legal_hold.set` / `.cleared`) "
        "with the key's preview as the actor; setting what already is so changes nothing (`changed: false`).",
    )
    def post(self, request: Request) -> Response:
        sent = LegalHoldInput.parse(body(request))
        caller = principal(request)
        if not approval_api_selectors.is_admin_key(caller.key_id):
            raise ApiProblem(
                403,
                "admin_key_required",
                "Setting or clearing a legal hold needs an admin-scoped API key; this key may read the holds only.",
            )
        account = Account.objects.select_related("plan").get(pk=caller.account_id)
        actor = f"api key {caller.key_preview}"
        reason = (sent.reason or "").strip()
        if sent.agent_id is not None:
            agent = Agent.objects.filter(account=account, agent_id=sent.agent_id).first()
            if agent is None:
                raise ApiProblem(404, "agent_not_found", f"No agent {sent.agent_id!r} in this account.")
            changed = holds.set_agent_hold(
                account=account, agent=agent, held=bool(sent.held), reason=reason, actor=actor
            )
        else:
            changed = holds.set_account_hold(account=account, held=bool(sent.held), reason=reason, actor=actor)
        return Response({**_holds(account), "changed": changed})
