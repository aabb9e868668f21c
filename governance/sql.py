"""The hand-written SQL of governance: the statements the ORM cannot say, or says too slowly on the hot path
(docs/benchmarks.md). Each is built once, at import, with table, column and cast names from the models' ``_meta``;
the comment above each lists the parameters it takes, in order. Only names from ``_meta`` are interpolated, never a
value (hence the ``noqa: S608``): values are always parameters.

The governed call (``governance.services``): ``AGENT_FOR_CALL`` reads the agent, the account and the registered
tool in one query; ``DECISION_AND_ROLLUP`` and ``DECISION_FOR_INTENT`` record a decision with its hourly rollup in
one statement (PostgreSQL); ``ROLLUP_UPSERT`` is the rollup alone, in the portable path's transaction. The rollup
upsert is written once (``_rollup_upsert``) and serves all three.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Field, Model, UniqueConstraint

from billing.models import Account
from governance.models import Agent, Decision, DecisionRollup, DispatchIntent, Tool

_quote = connection.ops.quote_name


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is not a concrete field"
    return field


def _name(field: Field[Any, Any]) -> str:
    """The field's column, quoted."""
    assert field.column is not None, f"{field} has no column"
    return _quote(field.column)


def _table(model: type[Model]) -> str:
    return _quote(model._meta.db_table)


def _column(model: type[Model], name: str) -> str:
    return _name(_field(model, name))


def _pk_column(model: type[Model]) -> str:
    assert model._meta.pk is not None and model._meta.pk.column is not None
    return model._meta.pk.column


def _pk(model: type[Model]) -> str:
    return _quote(_pk_column(model))


def _cast(field: Field[Any, Any]) -> str:
    """A placeholder cast to the field's PostgreSQL type without length or scale (varchar, numeric): the INSERT's
    own checks still apply, nothing is silently cut to fit."""
    db_type = field.cast_db_type(connection)
    assert db_type is not None, f"{field} has no database type"
    return f"%s::{db_type.split('(')[0]}"


# --- the agent of a governed call (docs/architecture.md §4.2, §4.4) -------------------------------------------------

CALL_ACCOUNT_FIELDS = ("id", "args_hash_key", "strict_mode")  # what a governed call reads of the account
AGENT_FIELDS: tuple[Field[Any, Any], ...] = tuple(Agent._meta.concrete_fields)
# In the model's order, as Account.from_db expects them.
ACCOUNT_FIELDS: tuple[Field[Any, Any], ...] = tuple(
    f for f in Account._meta.concrete_fields if f.attname in CALL_ACCOUNT_FIELDS
)
_SELECTED = ", ".join([*(f"a.{_name(f)}" for f in AGENT_FIELDS), *(f"c.{_name(f)}" for f in ACCOUNT_FIELDS)])
_A_ACCOUNT = f"a.{_column(Agent, 'account')}"
_T_ID, _T_ACCOUNT, _T_NAME_KEY, _T_SCOPE, _T_NAME, _T_TWIN = (
    f"t.{_column(Tool, name)}" for name in ("id", "account", "name_key", "scope_id", "name", "legacy_twin")
)
# The agent's columns (AGENT_FIELDS), the account's (ACCOUNT_FIELDS), then the id of the registered tool by the
# normalised name (governance_tool_unique_name_key serves it): the agent's scope first, then, among the legacy twins
# of migration 0009 only, the one of the exact name, else the oldest. One row, or none for an unknown agent.
# Parameters: the normalised tool name, "agent:<agent id>", the tool name as called, account id, agent id.
AGENT_FOR_CALL = f"""
SELECT {_SELECTED}, (
    SELECT {_T_ID} FROM {_table(Tool)} t WHERE {_T_ACCOUNT} = {_A_ACCOUNT} AND {_T_NAME_KEY} = %s
    AND {_T_SCOPE} IN (%s, 'global') ORDER BY {_T_SCOPE} = 'global', {_T_NAME} <> %s, {_T_TWIN} LIMIT 1
) FROM {_table(Agent)} a JOIN {_table(Account)} c ON c.{_pk(Account)} = {_A_ACCOUNT}
WHERE {_A_ACCOUNT} = %s AND a.{_column(Agent, "agent_id")} = %s
"""  # noqa: S608

# --- a decision and its hourly rollup (docs/architecture.md §4.8) ---------------------------------------------------

_ROLLUP = _table(DecisionRollup)
_ROLLUP_FIELDS = [
    _field(DecisionRollup, name) for name in ("account", "agent", "hour", "tool", "outcome", "count", "spend_usd")
]
_ROLLUP_COUNT, _ROLLUP_SPEND = _column(DecisionRollup, "count"), _column(DecisionRollup, "spend_usd")
# The upsert's conflict target: the unique (agent, hour, tool, outcome).
_ROLLUP_UNIQUE = next(
    c
    for c in DecisionRollup._meta.constraints
    if isinstance(c, UniqueConstraint) and c.name == "governance_rollup_unique"
)


def _rollup_upsert(row: str) -> str:
    """The one upsert of a decision's hourly rollup: a new (agent, hour, tool, outcome) row counts 1, an existing
    one adds 1 and the spend. ``row`` is the row source giving (account, agent, hour, tool, outcome, 1, spend)."""
    columns = ", ".join(_name(f) for f in _ROLLUP_FIELDS)
    conflict = ", ".join(_column(DecisionRollup, name) for name in _ROLLUP_UNIQUE.fields)
    return (
        f"INSERT INTO {_ROLLUP} ({columns}) {row}\n"
        f"    ON CONFLICT ({conflict}) DO UPDATE SET\n"
        f"        {_ROLLUP_COUNT} = {_ROLLUP}.{_ROLLUP_COUNT} + 1,\n"
        f"        {_ROLLUP_SPEND} = {_ROLLUP}.{_ROLLUP_SPEND} + excluded.{_ROLLUP_SPEND}"
    )


# The rollup alone (inside the transaction that writes its decision). Parameters: account id, agent pk, hour, tool,
# outcome, spend.
ROLLUP_UPSERT = _rollup_upsert("VALUES (%s, %s, %s, %s, %s, 1, %s)")

# The decision's columns, in the order the parameters of DECISION_AND_ROLLUP and DECISION_FOR_INTENT give them.
DECISION_FIELDS: tuple[Field[Any, Any], ...] = tuple(f for f in Decision._meta.concrete_fields if not f.primary_key)
_DECISION, _DECISION_ID = _table(Decision), _pk(Decision)
_DECISION_COLUMNS = ", ".join(_name(f) for f in DECISION_FIELDS)
_DECISION_VALUES = ", ".join(["%s"] * len(DECISION_FIELDS))

# PostgreSQL, outside a transaction: the decision and its rollup as one statement (its own synchronous
# transaction): one round trip instead of BEGIN, INSERT, upsert, COMMIT. Parameters: the values of
# DECISION_FIELDS, then the rollup's (as ROLLUP_UPSERT). Returns the decision's id.
DECISION_AND_ROLLUP = f"""
WITH decision AS (
    INSERT INTO {_DECISION} ({_DECISION_COLUMNS}) VALUES ({_DECISION_VALUES}) RETURNING {_DECISION_ID}
),
rollup AS (
    {ROLLUP_UPSERT}
)
SELECT {_DECISION_ID} FROM decision
"""  # noqa: S608

# A dispatched call's decision: the same, but only if its dispatch intent is still there (deleted by this very
# statement): the sweeper may have recorded it already. SELECT … FROM gone yields one row or none; the casts give
# the client-side-bound literals their column types (a SELECT list does not take them from the INSERT's columns).
# Parameters: the intent's id, then as DECISION_AND_ROLLUP. Returns the decision's id, or no row.
_INTENT_ID = _pk(DispatchIntent)
_DECISION_CASTS = ", ".join(_cast(f) for f in DECISION_FIELDS)
_ROLLUP_CASTS = ", ".join("1" if f.name == "count" else _cast(f) for f in _ROLLUP_FIELDS)
DECISION_FOR_INTENT = f"""
WITH gone AS (DELETE FROM {_table(DispatchIntent)} WHERE {_INTENT_ID} = %s RETURNING {_INTENT_ID}),
decision AS (
    INSERT INTO {_DECISION} ({_DECISION_COLUMNS}) SELECT {_DECISION_CASTS} FROM gone RETURNING {_DECISION_ID}
),
rollup AS (
    {_rollup_upsert(f"SELECT {_ROLLUP_CASTS} FROM gone")}
)
SELECT {_DECISION_ID} FROM decision
"""  # noqa: S608

# --- reads of the dashboard (governance.selectors, governance.overview) ------------------------------------------

# Every tool name the account's rollups name, in order, read from one name to the next (a loose index scan of
# governance_rollup_account_tool: one probe per name). Parameters: account id, account id, the most names to read.
_R_ACCOUNT, _R_TOOL = _column(DecisionRollup, "account"), _column(DecisionRollup, "tool")
CALLED_TOOLS = f"""
WITH RECURSIVE names(tool) AS (
    SELECT MIN({_R_TOOL}) FROM {_ROLLUP} WHERE {_R_ACCOUNT} = %s
    UNION ALL
    SELECT (SELECT MIN(r.{_R_TOOL}) FROM {_ROLLUP} r WHERE r.{_R_ACCOUNT} = %s AND r.{_R_TOOL} > names.tool)
    FROM names WHERE names.tool IS NOT NULL
)
SELECT tool FROM names WHERE tool IS NOT NULL LIMIT %s"""  # noqa: S608

# How often each reason occurs among the blocked decisions of a sample of the latest ones, read through the
# (account, -ts) index newest first. Parameters: account id, since, sample size, outcome, the most reasons to return.
_D_ACCOUNT, _D_TS, _D_OUTCOME, _D_REASON = (
    _column(Decision, name) for name in ("account", "ts", "outcome", "policy_reason")
)
BLOCK_REASONS = f"""
SELECT {_D_REASON}, COUNT(*) AS n FROM (
    SELECT {_D_OUTCOME}, {_D_REASON} FROM {_DECISION} WHERE {_D_ACCOUNT} = %s AND {_D_TS} >= %s
    ORDER BY {_D_TS} DESC LIMIT %s
) AS sample WHERE {_D_OUTCOME} = %s GROUP BY {_D_REASON} ORDER BY n DESC, {_D_REASON} LIMIT %s"""  # noqa: S608

# --- the kill switch's fence (governance.dispatch.KillSwitch, docs/architecture.md §4.7) ----------------------------

# Formatted with integers only (``:d``): nothing to quote, and no parameters, so PostgreSQL gets one simple-protocol
# message. ``lock`` is the first key of the advisory lock pair, ``key`` the agent's (32 bits), ``pk`` the agent row.
LOCK_SHARED = "SELECT pg_advisory_lock_shared({lock:d}, {key:d}); "
UNLOCK_SHARED = "SELECT pg_advisory_unlock_shared({lock:d}, {key:d})"
# The one statement whose columns are not quoted: tests/governance/test_kill_switch_in_flight.py counts the reads by
# the text "is_enabled FROM" (both are plain lowercase names, which need no quoting).
_IS_ENABLED, _AGENT_PK = _field(Agent, "is_enabled").column, _pk_column(Agent)
READ_ENABLED = f"SELECT {_IS_ENABLED} FROM {_table(Agent)} WHERE {_AGENT_PK} = {{pk:d}}"  # noqa: S608
# The disable's side, in its transaction. Parameters: the lock's first key, the agent's key.
LOCK_EXCLUSIVE = "SELECT pg_advisory_xact_lock(%s, %s)"
# SQLite: the database's write lock, held from an attempt's check to the end of its request's write.
SQLITE_BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
SQLITE_COMMIT = "COMMIT"
