"""Settings come from the environment through typed helpers that fail loudly on bad values."""

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from onceonly_site import env
from tests.support.servers import ROOT


def test_env_bool(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG") is True
    monkeypatch.setenv("X_FLAG", "0")
    assert env.env_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG must be a boolean"):
        env.env_bool("X_FLAG")


def test_env_int_bounds(monkeypatch):
    monkeypatch.setenv("X_INT", "12")
    assert env.env_int("X_INT", 1) == 12
    monkeypatch.setenv("X_INT", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        env.env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "-1")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be >= 0"):
        env.env_int("X_INT", 1, minimum=0)


def test_database_urls():
    pg = env.database_from_url("postgresql://u:p%40ss@db.example:6543/onceonly?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "onceonly",
        "u",
        "p@ss",
        "db.example",
        "6543",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
    assert env.database_from_url("sqlite:////abs/x.sqlite3")["NAME"] == "/abs/x.sqlite3"
    assert env.database_from_url("sqlite:///rel/x.sqlite3")["NAME"] == "rel/x.sqlite3"
    for bad in ("mysql://x/y", "postgresql://host:5432/", "sqlite://", "postgresql://h:notaport/db"):
        with pytest.raises(ImproperlyConfigured):
            env.database_from_url(bad)


def test_redis_urls():
    assert env.redis_url_with_db("redis://h:6379/0", 9) == "redis://h:6379/9"
    assert env.redis_url_with_db("unix:///v/redis.sock?db=0", 9) == "unix:///v/redis.sock?db=9"
    assert env.celery_url_from_redis("unix:///v/redis.sock?db=3") == "redis+socket:///v/redis.sock?virtual_host=3"
    assert env.celery_url_from_redis("redis://h:6379/2") == "redis://h:6379/2"
    for bad in ("http://h", "redis://h/notanumber", "memcached://x"):
        with pytest.raises(ImproperlyConfigured):
            env.validate_redis_url(bad)


def _settings_import(**environ) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "ONCEONLY_EMBEDDED_REDIS_AUTOSTART": "0", **environ}
    return subprocess.run(
        [sys.executable, "-c", "import onceonly_site.settings"], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_secret_key_is_required_without_debug(tmp_path):
    result = _settings_import(ONCEONLY_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


def test_bad_values_stop_start_up_with_the_variable_named(tmp_path):
    result = _settings_import(ONCEONLY_VAR_DIR=str(tmp_path), DEBUG="perhaps")
    assert "DEBUG must be a boolean" in result.stderr
    result = _settings_import(ONCEONLY_VAR_DIR=str(tmp_path), SECRET_KEY="k" * 50, DATABASE_URL="oracle://x/y")
    assert "DATABASE_URL scheme 'oracle' is not supported" in result.stderr


def test_debug_generates_a_persistent_dev_secret(tmp_path):
    assert _settings_import(ONCEONLY_VAR_DIR=str(tmp_path), DEBUG="1").returncode == 0
    first = (tmp_path / "dev-secret-key").read_text()
    assert _settings_import(ONCEONLY_VAR_DIR=str(tmp_path), DEBUG="1").returncode == 0
    assert (tmp_path / "dev-secret-key").read_text() == first
    assert oct((tmp_path / "dev-secret-key").stat().st_mode & 0o777) == "0o600"


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "ONCEONLY_VAR_DIR": str(tmp_path),
            "ONCEONLY_EMBEDDED_REDIS_AUTOSTART": "0",
            "SECRET_KEY": "x9" * 30 + "-production-grade-secret",
            "ONCEONLY_HTTPS": "1",
            "ALLOWED_HOSTS": "onceonly.example.com",
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
