"""The layering: ``onceonly_site`` is shared code the apps build on, so none of its modules imports an app — except
the wiring that exists to join them (``urls.py`` routes every app, ``metrics.py`` reads their tables, ``celery.py``
finds their tasks). An import inside a function counts too: it is the same arrow, only later."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = {"billing", "governance", "idempotency"}
WIRING = {"urls.py", "metrics.py", "celery.py"}


def imported_packages(source: str) -> set[str]:
    """The top-level package of every import in ``source`` (absolute imports; the project uses no relative ones)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


SHARED = sorted(path for path in (ROOT / "onceonly_site").glob("*.py") if path.name not in WIRING)


@pytest.mark.parametrize("path", SHARED, ids=[path.name for path in SHARED])
def test_shared_modules_import_no_app(path):
    assert not imported_packages(path.read_text()) & APPS


def test_the_check_sees_imports_inside_functions():
    source = "def f():\n    from billing.usage import reserve\n    import governance.models\n"
    assert imported_packages(source) == {"billing", "governance"}


def test_the_wiring_is_what_imports_the_apps():
    # The exceptions are real: if one stopped importing an app, it would no longer need to be listed.
    for name in WIRING - {"celery.py"}:
        assert imported_packages((ROOT / "onceonly_site" / name).read_text()) & APPS, name
