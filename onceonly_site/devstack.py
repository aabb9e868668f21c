"""`make run`: the whole stack in one terminal, on the embedded defaults unless DATABASE_URL/REDIS_URL are set;
and `make manage ARGS="…"`: ``manage.py`` with the environment of that stack, from any terminal.

`make run` records its configuration in ``var/devstack.env``, starts the embedded Redis (unless REDIS_URL is set),
migrates, creates the demo account on first start (printing its login and API key, and saving them in
``var/demo-credentials.txt``), then runs the web server, a Celery worker and Celery beat. Once the web server
answers ``/healthz`` and the worker is ready it prints a summary: the login, or where it was saved, and the
`make manage` commands that reset it. Ctrl-C (or SIGTERM) stops everything it started: each child runs in its own
process group, gets SIGTERM, and SIGKILL after a grace period; Redis is shut down last. No ``redis-server``, worker
or beat process is left behind.

`make manage` (``python -m onceonly_site.devstack manage ARGS…``) runs ``manage.py`` with the configuration the
last `make run` of this var dir recorded, else with make run's defaults (``DEBUG=1``; SQLite and the embedded
Redis under ``var/``). Plain ``manage.py`` is left alone: it never turns ``DEBUG`` on by itself.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from onceonly_site.embedded_redis import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = BASE_DIR / "var"
GRACE_SECONDS = 10.0
# The final summary waits this long for the web server and the worker, then comes anyway, naming what is missing.
SUMMARY_WAIT_SECONDS = 90.0

ENV_FILE = "devstack.env"
CREDENTIALS_FILE = "demo-credentials.txt"
DEMO_ACCOUNT = "demo"
DEMO_EMAIL = "demo@onceonly.local"

# The stack's configuration: every variable the settings read (onceonly_site/settings.py; tests/test_make_run.py
# checks that these cover all of them). `make run` records the ones set; `make manage` applies exactly those.
_CONFIG_NAMES = frozenset(
    {
        "ALLOWED_HOSTS",
        "CELERY_BROKER_URL",
        "CELERY_TASK_ALWAYS_EAGER",
        "CSRF_TRUSTED_ORIGINS",
        "DATABASE_URL",
        "DB_CONN_MAX_AGE",
        "DEBUG",
        "DEFAULT_FROM_EMAIL",
        "DJANGO_SETTINGS_MODULE",
        "LOG_LEVEL",
        "REDIS_URL",
        "SECRET_KEY",
        "SESSION_COOKIE_AGE",
        "WEB_THREADS",
    }
)
_CONFIG_PREFIXES = ("ONCEONLY_", "STRIPE_", "EMAIL_", "OTEL_")
# Not part of it: make run starts its embedded Redis itself, and make manage must be free to connect to it, or to
# start one for the command's duration when the stack is stopped. The tests' Redis database is the tests' own.
NOT_RECORDED = frozenset({"ONCEONLY_EMBEDDED_REDIS_AUTOSTART", "ONCEONLY_TEST_REDIS_DB"})

_output = threading.Lock()  # the supervisor's lines and the worker's relayed lines never interleave mid-line
_WORKER_READY = re.compile(rb"\S+@\S+ ready\.")


def _log(message: str) -> None:
    with _output:
        print(f"[make run] {message}", flush=True)


def is_configuration(name: str) -> bool:
    return name not in NOT_RECORDED and (name in _CONFIG_NAMES or name.startswith(_CONFIG_PREFIXES))


def var_dir_of(environ: Mapping[str, str]) -> Path:
    """The var dir as the settings resolve it (``ONCEONLY_VAR_DIR``, default ``./var`` of the checkout)."""
    return Path(environ.get("ONCEONLY_VAR_DIR") or DEFAULT_VAR_DIR).resolve()


def shown_path(path: Path) -> str:
    """A path as a user in the checkout types it: relative inside the checkout, absolute elsewhere."""
    return str(path.relative_to(BASE_DIR)) if path.is_relative_to(BASE_DIR) else str(path)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a reader sees the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a leftover temporary file had another mode
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def manage_command(var_dir: Path, args: str) -> str:
    """The `make manage` command line that runs ``manage.py args`` against the stack of ``var_dir``."""
    prefix = "" if var_dir.resolve() == DEFAULT_VAR_DIR.resolve() else f"ONCEONLY_VAR_DIR={shlex.quote(str(var_dir))} "
    return f'{prefix}make manage ARGS="{args}"'


def demo_commands(var_dir: Path) -> tuple[str, str]:
    """The commands that reset the demo login's password and create another demo API key."""
    return (
        manage_command(var_dir, f"create_operator --account {DEMO_ACCOUNT} --email {DEMO_EMAIL} --password NEW"),
        manage_command(var_dir, f"create_api_key --account {DEMO_ACCOUNT}"),
    )


# --- var/demo-credentials.txt: written by bootstrap_demo on the first start, read back for the summary -----------
_CREDENTIAL_FIELDS = {"Dashboard": "dashboard", "Login": "login", "Password": "password", "API key": "api_key"}


def write_credentials(path: Path, *, base_url: str, password: str, api_key: str, var_dir: Path) -> None:
    reset, new_key = demo_commands(var_dir)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_private(
        path,
        "\n".join(
            [
                f"# OnceOnly Server: the demo account `make run` created on {when}. Mode 0600; delete this file once",
                "# you have stored the password and key elsewhere. They stay valid until you change them.",
                f"Dashboard: {base_url}/",
                f"Login:     {DEMO_EMAIL}",
                f"Password:  {password}",
                f"API key:   {api_key}",
                f'SDK:       OnceOnly(api_key="{api_key}", base_url="{base_url}/v1")',
                "",
                "# In the checkout, in any terminal: reset the password (replace NEW), create another API key.",
                reset,
                new_key,
                "",
            ]
        ),
    )


def read_credentials(path: Path) -> dict[str, str] | None:
    """``dashboard``, ``login``, ``password`` and ``api_key`` from a credentials file; None if missing or broken."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep and label in _CREDENTIAL_FIELDS and value.strip():
            found[_CREDENTIAL_FIELDS[label]] = value.strip()
    return found if len(found) == len(_CREDENTIAL_FIELDS) else None


def summary(base_url: str, var_dir: Path, *, credentials: dict[str, str] | None, waiting: list[str]) -> str:
    """The box `make run` prints once it is up. ``credentials``: the demo login created by this start, if any."""
    path = var_dir / CREDENTIALS_FILE
    reset, new_key = demo_commands(var_dir)
    lines = [f"OnceOnly Server is up on {base_url}/ (Ctrl-C stops everything)"]
    if credentials:
        lines += [
            f"  Dashboard : {base_url}/   login {credentials['login']}   password {credentials['password']}",
            f"  API key   : {credentials['api_key']}",
            f'  SDK       : OnceOnly(api_key=KEY, base_url="{base_url}/v1")',
            f"  Saved in  : {shown_path(path)} (mode 0600)",
        ]
    else:
        saved = (
            f"in {shown_path(path)}, with the API key, as created on the first start (unless reset since)"
            if path.exists()
            else f"not shown again ({shown_path(path)} was deleted); reset it below"
        )
        lines += [
            f"  Dashboard : {base_url}/   login {DEMO_EMAIL}",
            f"  Password  : {saved}",
            f'  SDK       : OnceOnly(api_key=KEY, base_url="{base_url}/v1")',
        ]
    lines += [
        "  Reset the password (NEW: 10+ characters) or add an API key, in another terminal here:",
        f"    {reset}",
        f"    {new_key}",
    ]
    if waiting:
        lines.append(f"  Not ready after {SUMMARY_WAIT_SECONDS:.0f} s: {', '.join(waiting)} (see the log above)")
    rule = "=" * max(72, *(len(line) for line in lines))
    return "\n".join(["", rule, *lines, rule, ""])


# --- var/devstack.env: the configuration make run used, for make manage ------------------------------------------
def render_env_file(config: Mapping[str, str]) -> str:
    header = [
        "# Written by `make run` (onceonly_site/devstack.py) at each start: the configuration its processes used.",
        '# `make manage ARGS="…"` runs manage.py with exactly these variables (your shell\'s own values of the',
        "# stack's variables are ignored). REDIS_URL is absent when the stack used its embedded Redis. Mode 0600: it",
        "# may hold DATABASE_URL's password or SECRET_KEY. Shell syntax: `set -a; . var/devstack.env; set +a`.",
    ]
    return "\n".join([*header, *(f"{name}={shlex.quote(value)}" for name, value in sorted(config.items())), ""])


def read_env_file(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    config = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, raw = line.partition("=")
        words = shlex.split(raw)
        config[name.strip()] = words[0] if words else ""
    return config


def manage_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment `make manage` gives manage.py: this shell's, with the stack's configuration in place of its
    own (from ``var/devstack.env``), or with make run's defaults when no `make run` recorded one."""
    env = dict(environ)
    var_dir = var_dir_of(environ)
    recorded = read_env_file(var_dir / ENV_FILE)
    if recorded is not None:
        for name in [name for name in env if is_configuration(name)]:
            del env[name]
        env.update(recorded)
    env.setdefault("DEBUG", "1")
    env["ONCEONLY_VAR_DIR"] = str(var_dir)
    return env


def manage(args: list[str]) -> int:
    env = manage_environment(os.environ)
    python = sys.executable
    os.chdir(BASE_DIR)
    # Replace this process: signals and the exit status are manage.py's own.
    os.execve(python, [python, str(BASE_DIR / "manage.py"), *args], env)  # noqa: S606 - the user's arguments, no shell
    return 1  # not reached


class Stack:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if environ is None else environ)
        self.env.setdefault("DEBUG", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.var_dir = var_dir_of(self.env)
        self.env["ONCEONLY_VAR_DIR"] = str(self.var_dir)
        # Taken before REDIS_URL may be pointed at the embedded Redis: that URL must not outlive the stack.
        self.config = {name: value for name, value in self.env.items() if is_configuration(name)}
        self.host = self.env.get("HOST", "127.0.0.1")
        self.port = int(self.env.get("PORT", "8000"))
        self.base_url = f"http://{self.host}:{self.port}"
        # Links that leave the server (an approval's URL in API answers and notifications) point at this stack.
        self.env.setdefault("ONCEONLY_PUBLIC_URL", self.base_url)
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.relays: list[threading.Thread] = []
        self.worker_ready = threading.Event()
        self.new_credentials: dict[str, str] | None = None
        self.stopping = False

    def record_environment(self) -> None:
        write_private(self.var_dir / ENV_FILE, render_env_file(self.config))

    def _manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True)

    def _spawn(self, name: str, argv: list[str], *, relay: bool = False) -> None:
        # start_new_session: the terminal's Ctrl-C reaches only this supervisor, which then stops the children
        # in order (web first, Redis last) instead of everything dying at once mid-request.
        pipe = subprocess.PIPE if relay else None
        process = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=self.env,
            start_new_session=True,
            stdout=pipe,
            stderr=subprocess.STDOUT if relay else None,
        )
        self.children.append((name, process))
        if relay:
            thread = threading.Thread(target=self._relay, args=(process.stdout,), name=f"relay-{name}", daemon=True)
            thread.start()
            self.relays.append(thread)
        _log(f"started {name} (pid {process.pid})")

    def _relay(self, stream: IO[bytes]) -> None:
        """Copy the worker's output to ours line by line, noticing its "ready." line on the way."""
        out = sys.stdout.buffer
        for line in iter(stream.readline, b""):
            try:
                with _output:
                    out.write(line)
                    out.flush()
            except (OSError, ValueError):
                pass  # our output is gone: keep draining, or the worker would block on a full pipe
            if not self.worker_ready.is_set() and _WORKER_READY.search(line):
                self.worker_ready.set()
        stream.close()

    def _web_answers(self) -> bool:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        try:
            with urllib.request.urlopen(f"http://{host}:{self.port}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def start(self) -> None:
        self.record_environment()
        if not self.env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(self.var_dir)
            if self.redis.start():
                _log(f"embedded Redis on {self.redis.url}")
            else:
                _log(f"an embedded Redis already answers on {self.redis.url}; using it (it is not ours to stop)")
            # Children connect to it and must not try to start (and own) one of their own.
            self.env["REDIS_URL"] = self.redis.url
        self._manage("migrate", "--noinput", "-v", "0")
        credentials = self.var_dir / CREDENTIALS_FILE
        before = _read_or_none(credentials)
        self._manage("bootstrap_demo", "--base-url", self.base_url, "--credentials-file", str(credentials))
        after = _read_or_none(credentials)
        if after is not None and after != before:  # written by this start: the demo account is new
            self.new_credentials = read_credentials(credentials)
        python = sys.executable
        self._spawn("web", [python, "manage.py", "runserver", f"{self.host}:{self.port}", "--noreload"])
        self._spawn(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"dev@{os.uname().nodename}",
            ],
            relay=True,
        )
        self._spawn(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.var_dir / "celerybeat-schedule"),
            ],
        )
        _log(f"serving {self.base_url}/ — press Ctrl-C to stop everything")

    def wait(self) -> int:
        started = time.monotonic()
        summary_due = True
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    _log(f"{name} exited with {process.returncode}; stopping the stack")
                    return 1
            if summary_due:
                ready = self.worker_ready.is_set() and self._web_answers()
                if ready or time.monotonic() - started > SUMMARY_WAIT_SECONDS:
                    self._print_summary(ready)
                    summary_due = False
            time.sleep(0.3)
        return 0

    def _print_summary(self, ready: bool) -> None:
        waiting = []
        if not ready:
            if not self._web_answers():
                waiting.append("the web server (/healthz)")
            if not self.worker_ready.is_set():
                waiting.append('the worker (no "ready." line)')
        text = summary(self.base_url, self.var_dir, credentials=self.new_credentials, waiting=waiting)
        with _output:
            print(text, flush=True)

    def stop(self) -> None:
        for _, process in self.children:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        for name, process in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"{name} did not stop within {GRACE_SECONDS:.0f} s; killing it")
            # Kill the whole group either way: a Celery worker's pool children must not outlive it.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        for thread in self.relays:
            thread.join(timeout=2)  # the worker's last lines come before "stopped"
        if self.redis is not None:
            self.redis.stop()
        _log("stopped")


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["manage"]:
        return manage(argv[1:])
    stack = Stack()
    signal.signal(signal.SIGINT, stack._on_signal)
    signal.signal(signal.SIGTERM, stack._on_signal)
    code = 1
    try:
        stack.start()
        code = stack.wait()
    except subprocess.CalledProcessError as exc:
        _log(f"set-up step failed: {' '.join(map(str, exc.cmd))} (exit {exc.returncode})")
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
