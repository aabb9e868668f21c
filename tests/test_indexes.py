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
