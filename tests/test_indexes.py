"""No index on the write-heavy tables that another index already covers: each one is one more write per row on
the hot paths (docs/benchmarks.md), and a leading-column prefix of another index answers the same lookups."""

import pytest
from django.db import connection

HOT_TABLES = ["governance_decision", "governance_decisionrollup", "idempotency_lockrecord"]


@pytest.mark.django_db
@pytest.mark.parametrize("table", HOT_TABLES)
def test_no_index_is_a_prefix_of_another(table):
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    indexes = {name: c["columns"] for name, c in constraints.items() if c["index"] or c["unique"]}
    assert indexes, f"{table} has no indexes at all: introspection failed"
    redundant = [
        (name, other)
        for name, columns in indexes.items()
        if not constraints[name]["unique"] and not constraints[name]["primary_key"]
        for other, other_columns in indexes.items()
        if other != name and len(other_columns) > len(columns) and other_columns[: len(columns)] == columns
    ]
    assert redundant == [], f"indexes covered by a longer one: {redundant}"


@pytest.mark.django_db
def test_every_index_of_the_decision_log_ends_where_new_rows_go():
    """Each index of the decision table leads with the account and ends with the time, which only grows: a new
    decision's entries land at the right edge of each (docs/scaling.md §"The decision log as it grows"). An
    index ending with anything else (a hash, a tool) puts them anywhere in an index as large as the table."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "governance_decision")
    indexes = {
        name: c["columns"] for name, c in constraints.items() if c["index"] and not c["primary_key"] and c["columns"]
    }
    assert len(indexes) >= 3, indexes
    # The foreign key of a dedup row's original: it points at a recent decision, whose id only grows too.
    wrong = {
        name: columns
        for name, columns in indexes.items()
        if columns != ["original_id"] and (columns[0] != "account_id" or columns[-1] != "ts")
    }
    assert wrong == {}, f"indexes whose new entries do not land at the right edge: {wrong}"
