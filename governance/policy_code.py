"""Policies as code (docs/policies-as-code.md): every agent's policy as one YAML file, and a file applied back —
checked whole first (every problem with its line, agent and field), then applied in one transaction, all or
nothing; and the drift of the live policies from the last file applied.

Pure: ``read`` (the file's text → its agents' validated policies, or its problems) and ``render``. Service:
``export``, ``plan`` (the file against the live policies: per agent create / change / unchanged, with the semantic
diff and the line diff of the policy page), ``apply`` and ``drift``.

The file's meaning: each agent's entry is its **whole** policy (a field left out is cleared, as in the editor);
agents the file does not name are left as they are; ``{}`` is a policy without limits; an agent written with no
policy (``null``) is an error, never "ungoverned" (no change path removes a policy: docs/api.md §"Policies")."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from billing.models import Account
from billing.services import audit_record
from governance import display, policies, services
from governance.models import Agent, PolicyFile, PolicyVersion
from onceonly_site.api import BodyCheck
from onceonly_site.bodies import AgentId, Invalid
from onceonly_site.identifiers import normalise_tool

MAX_BYTES = 1024 * 1024  # 1 MiB of UTF-8
MAX_AGENTS = 10_000
DEFAULT_FILENAME = "policies.yaml"
MAX_SOURCE = 64  # PolicyVersion.source
CREATE, CHANGE, UNCHANGED = "create", "change", "unchanged"
PREVIEW_SECONDS = 3600  # an uploaded file waits this long for its Confirm (the dashboard)
AUDITED_NAMES = 100  # agent ids listed in the apply's audit entry (every one has its own policy entry too)

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_STR = "tag:yaml.org,2002:str"
_AGENT_ID = AgentId()
_COMMENT_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# --- problems -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem of a file: where (line, 1-based; the agent; the policy field, dotted for an item) and what."""

    message: str
    code: str
    line: int | None = None
    agent: str | None = None
    field: str | None = None

    def text(self, filename: str) -> str:
        """``FILE:LINE: agent: field: message`` (the parts known)."""
        parts = [f"{filename}:{self.line}" if self.line else filename]
        parts += [part for part in (self.agent, self.field) if part is not None]
        return ": ".join([*parts, self.message])

    def item(self, filename: str) -> dict[str, Any]:
        """As an item of the API's 422 list (docs/api.md §"The error contract"), with line, agent and field."""
        loc: list[str | int] = ["body", "yaml"]
        if self.agent is not None:
            loc += ["agents", self.agent]
            if self.field is not None:
                loc.append(self.field)
        return {
            "type": self.code,
            "loc": loc,
            "msg": self.text(filename),
            "line": self.line,
            "agent": self.agent,
            "field": self.field,
        }


class PlanHasErrors(Exception):
    """A plan with problems cannot be applied (nothing was written)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the file; nothing was applied")
        self.problems = problems


class PlanStale(Exception):
    """The live policies changed after the plan was made: what it showed is no longer what it would do."""

    def __init__(self, agents: list[str]) -> None:
        shown = ", ".join(agents[:5]) + (f" and {len(agents) - 5} more" if len(agents) > 5 else "")
        super().__init__(f"the policies of {shown} changed since the plan was made; nothing was applied")
        self.agents = agents


# --- reading a file (pure) ------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One agent of a file: its validated policy (in the policy's field order) and where it stands."""

    agent_id: str
    line: int
    policy: dict[str, Any]
    field_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class Read:
    entries: list[Entry]
    errors: list[Problem]


def decode(data: bytes) -> str:
    """A file's bytes as text: UTF-8 (a byte-order mark is dropped). Raises ``PlanHasErrors`` otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PlanHasErrors([Problem("Not UTF-8 text.", "unicode_decode", line=line)]) from None


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _str_key(node: yaml.Node) -> str | None:
    """A mapping key that YAML reads as a string (``123``, ``yes`` or ``~`` unquoted are not)."""
    return node.value if isinstance(node, yaml.ScalarNode) and node.tag == _STR else None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError):
        what = " ".join(part for part in (exc.context, exc.problem) if part) or "not valid YAML"
    else:
        what = str(exc).splitlines()[0] if str(exc) else "not valid YAML"
    line = mark.line + 1 if mark is not None else None
    if line is None and isinstance(getattr(exc, "position", None), int):  # a ReaderError (a forbidden character)
        line = text[: exc.position].count("\n") + 1  # type: ignore[attr-defined]
    return Problem(f"Not valid YAML: {what}.", "yaml_invalid", line=line)


def _locate(node: yaml.Node, loc: str, message: str) -> int:
    """The line of the policy's place ``loc`` (``max_calls_per_tool.send_email``, ``pricing_rules.0.price_usd``; a
    tool name may hold dots: the longest key that fits is taken), down to the list entry or key the message names
    (``'delete user': …``)."""
    line, rest = _line(node), loc
    while rest:
        if isinstance(node, yaml.MappingNode):
            fits = [
                (key, value)
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode) and (rest == key.value or rest.startswith(f"{key.value}."))
            ]
            if not fits:
                break
            key, node = max(fits, key=lambda pair: len(pair[0].value))
            line, rest = _line(key), rest[len(key.value) + 1 :]
        elif isinstance(node, yaml.SequenceNode):
            head, _, rest = rest.partition(".")
            if not head.isdigit() or int(head) >= len(node.value):
                break
            node = node.value[int(head)]
            line = _line(node)
        else:
            break
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [key for key, _ in node.value]
    else:
        children = []
    for child in children:
        if isinstance(child, yaml.ScalarNode) and message.startswith(f"{child.value.strip()!r}:"):
            return _line(child)
    return line


def _agent_problem(agent_id: str) -> tuple[str, str] | None:
    try:
        _AGENT_ID.parse(agent_id)
    except Invalid as refused:
        return refused.message, refused.code
    if agent_id == services.OPERATOR_AGENT:
        return f"{agent_id!r} is reserved for the dashboard's test calls of registered tools.", "value_error"
    return None


FILE_SHAPE = 'A policies file is a mapping with one key, "agents": {agent id: policy}.'


def read(text: str) -> Read:
    """The agents of a policies file with their validated policies (``policies.PolicyInput``, the API's and the
    editor's one validation), or every problem found, each with its line. An empty file names no agent."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        return Read([], [Problem(f"The file is {size:,} bytes; at most {MAX_BYTES:,} (1 MiB).", "too_long")])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:  # empty, or only comments
            return Read([], [])
        return _read_document(loader, root)
    except yaml.YAMLError as exc:
        return Read([], [_yaml_problem(exc, text)])
    except RecursionError:  # the pure-Python parser on deep nesting (libyaml stops at 1,000 levels itself)
        return Read([], [Problem("Not valid YAML: nested too deeply.", "yaml_invalid")])
    finally:
        loader.dispose()


def _read_document(loader: Any, root: yaml.Node) -> Read:
    errors: list[Problem] = []
    if not isinstance(root, yaml.MappingNode):
        return Read([], [Problem(FILE_SHAPE, "policy_file", line=_line(root))])
    agents_node = None
    for key, value in root.value:
        if _str_key(key) == "agents" and agents_node is None:
            agents_node = value
        elif _str_key(key) == "agents":
            errors.append(Problem('Named twice: one "agents" key per file.', "duplicate", line=_line(key)))
        else:
            shown = key.value if isinstance(key, yaml.ScalarNode) else "…"
            errors.append(Problem(f"Unknown key {shown!r}. {FILE_SHAPE}", "extra_forbidden", line=_line(key)))
    if agents_node is None:
        return Read([], [*errors, Problem(f'No "agents" key. {FILE_SHAPE}', "missing", line=_line(root))])
    if isinstance(agents_node, yaml.ScalarNode) and loader.construct_object(agents_node) is None:
        return Read([], errors)  # "agents:" and nothing: no agent
    if not isinstance(agents_node, yaml.MappingNode):
        return Read(
            [], [*errors, Problem(f'"agents" must be a mapping. {FILE_SHAPE}', "dict_type", _line(agents_node))]
        )
    if len(agents_node.value) > MAX_AGENTS:
        message = f"The file names {len(agents_node.value):,} agents; at most {MAX_AGENTS:,}."
        return Read([], [*errors, Problem(message, "too_long", line=_line(agents_node))])
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for key, value in agents_node.value:
        line = _line(key)
        agent_id = _str_key(key)
        if agent_id is None:
            shown = key.value if isinstance(key, yaml.ScalarNode) else "…"
            message = f"An agent id is text: {shown!r} reads as another type in YAML; quote it ('{shown}')."
            errors.append(Problem(message, "string_type", line=line))
            continue
        refused = _agent_problem(agent_id)
        if refused is not None:
            errors.append(Problem(refused[0], refused[1], line=line, agent=agent_id))
            continue
        if agent_id in seen:
            errors.append(Problem(f"Named twice (also at line {seen[agent_id]}).", "duplicate", line, agent_id))
            continue
        seen[agent_id] = line
        try:
            policy = loader.construct_object(value, deep=True)
        except yaml.MarkedYAMLError as exc:
            errors.append(Problem(_yaml_problem(exc, "").message, "yaml_invalid", _line(value), agent_id))
            continue
        entry = _entry(agent_id, line, policy, value, errors)
        if entry is not None:
            entries.append(entry)
    return Read(entries, errors)


def _entry(agent_id: str, line: int, policy: Any, node: yaml.Node, errors: list[Problem]) -> Entry | None:
    """One agent's policy checked by ``policies.PolicyInput`` (every problem reported), or None."""
    if policy is None:
        message = (
            "No policy (null). Write {} for a policy without limits, or leave the agent out of the file to keep "
            "its policy as it is."
        )
        errors.append(Problem(message, "none_forbidden", line=line, agent=agent_id))
        return None
    if not isinstance(policy, dict):
        message = "A policy is a mapping of policy fields ({} for a policy without limits)."
        errors.append(Problem(message, "dict_type", line=_line(node), agent=agent_id))
        return None
    check = BodyCheck({}, frozenset())
    if "agent_id" in policy:  # the API ignores it in a body; in a file the key above names the agent
        check.fail("agent_id", f"Unknown field. Policy fields: {', '.join(policies.FIELDS)}.", "extra_forbidden")
    body = policies.PolicyInput.fill(check, {k: v for k, v in policy.items() if k != "agent_id"}, "")
    for loc, details in check.errors.items():
        for detail in details:
            where = _locate(node, str(loc), str(detail))
            errors.append(Problem(str(detail), detail.code, line=where, agent=agent_id, field=str(loc)))
    if check.errors:
        return None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {key.value: _line(key) for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return Entry(agent_id, line, policies.merge({}, body.changes()), lines)


# --- writing a file (pure) ------------------------------------------------------------------------------------------


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub(" ", text)


def _key(agent_id: str) -> str:
    """``agent_id`` as a mapping key on one line: plain when YAML reads it back as that string, else quoted."""
    dumped = yaml.dump(agent_id, Dumper=_Dumper, allow_unicode=True, width=10**6)
    first = dumped.split("\n", 1)[0]
    if first and not first.startswith(("?", "!", "&", "*", "|", ">")) and len(first) < 1000:
        return first
    return '"' + agent_id.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _body(policy: dict[str, Any]) -> str:
    """A policy's fields as block YAML, one field after the other in the policy's field order; lists of names and
    rules inline (``[delete_*, drop_*]``, ``- {tool: x, price_usd: 1.0}``)."""
    out = []
    for name in [*policies.FIELDS, *sorted(set(policy) - set(policies.FIELDS))]:
        if name in policy:
            value = policy[name]
            leaf = not isinstance(value, list | dict)  # a lone scalar would be written {name: value}
            out.append(
                yaml.dump(
                    {name: value},
                    Dumper=_Dumper,
                    sort_keys=False,
                    allow_unicode=True,
                    default_flow_style=False if leaf else None,
                    width=100,
                )
            )
    return "".join(out)


@dataclass(frozen=True)
class Exported:
    """An agent as the export writes it: its policy and where its current version came from."""

    agent_id: str
    policy: dict[str, Any]
    version: int
    source: str = ""
    by: str = ""
    at: datetime | None = None


def render(account_name: str, agents: Iterable[Exported], now: datetime) -> str:
    """The policies file of these agents (in the order given), with comments: the account and the export time, and
    per agent its version, source, author and time."""
    lines = [
        f"# OnceOnly policies of account {_comment(account_name)} — exported {now:%Y-%m-%dT%H:%MZ}",
        "# Each agent's entry is its whole policy; agents left out of a file keep theirs (docs/policies-as-code.md).",
    ]
    body = []
    for agent in agents:
        about = f"v{agent.version}"
        if agent.source:
            about += f", {agent.source}"
        if agent.by:
            about += f" by {agent.by}"
        if agent.at is not None:
            about += f" at {agent.at:%Y-%m-%d %H:%M} UTC"
        comment = f"  # {_comment(about)}"
        if not agent.policy:
            body.append(f"  {_key(agent.agent_id)}: {{}}{comment}")
            continue
        body.append(f"  {_key(agent.agent_id)}:{comment}")
        body += [f"    {line}" for line in _body(agent.policy).splitlines()]
    lines += ["agents:", *body] if body else ["agents: {}"]
    return "\n".join(lines) + "\n"


# --- the service ----------------------------------------------------------------------------------------------------


def _governed(account_id: int):
    return Agent.objects.filter(account_id=account_id, policy_version__isnull=False).exclude(
        agent_id=services.OPERATOR_AGENT
    )


def export(account_id: int, *, now: datetime | None = None) -> str:
    """Every agent of the account that has a policy, by agent id, as a policies file. Two queries."""
    return export_counted(account_id, now=now)[0]


def export_counted(account_id: int, *, now: datetime | None = None) -> tuple[str, int]:
    """``export``, and how many agents it holds."""
    account = Account.objects.only("name").get(pk=account_id)
    current = PolicyVersion.objects.filter(agent=OuterRef("pk"), version=OuterRef("policy_version"))
    rows = (
        _governed(account_id)
        .annotate(
            v_source=Subquery(current.values("source")[:1]),
            v_by=Subquery(current.values("created_by")[:1]),
            v_at=Subquery(current.values("created_at")[:1]),
        )
        .order_by("agent_id")
        .values_list("agent_id", "policy", "policy_version", "v_source", "v_by", "v_at")
    )
    agents = [
        Exported(agent_id, policy or {}, version, source or "", by or "", at)
        for agent_id, policy, version, source, by, at in rows
    ]
    return render(account.name, agents, timezone.now() if now is None else now), len(agents)


@dataclass
class AgentPlan:
    """What applying the file does to one agent it names."""

    agent_id: str
    line: int
    policy: dict[str, Any]  # what the file gives it
    action: str  # create / change / unchanged
    pk: int | None  # the agent's row (None: the apply registers it)
    version: int | None  # its current version (None: no policy yet)
    before: dict[str, Any] | None  # its current policy
    changes: list[dict[str, Any]]  # display.policy_changes
    diff: list[str]  # display.diff_lines: the policy page's coloured diff
    warnings: list[str] = field(default_factory=list)

    @property
    def new_version(self) -> int | None:
        return None if self.action == UNCHANGED else (self.version or 0) + 1


@dataclass
class Plan:
    """A file against the live policies: per agent the action and its diff, and every problem of the file."""

    account_id: int
    filename: str
    sha256: str
    agents: list[AgentPlan]
    errors: list[Problem]
    untouched: int  # agents with a policy that the file does not name: left as they are

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changed(self) -> list[AgentPlan]:
        return [agent for agent in self.agents if agent.action != UNCHANGED]

    def count(self, action: str) -> int:
        return sum(agent.action == action for agent in self.agents)

    @property
    def fingerprint(self) -> str:
        """The file and the versions it was compared with: a confirm of this plan applies exactly this."""
        seen = "\n".join(f"{agent.agent_id}\x00{agent.version}" for agent in self.agents)
        return hashlib.sha256(f"{self.sha256}\n{seen}".encode("utf-8", "surrogatepass")).hexdigest()

    def summary(self, *, done: bool = False) -> str:
        """What the plan does in one sentence: "2 agents to create, 1 to change, 5 unchanged; not in the file: 3
        agents left as they are." (``done``: "created", "changed")."""
        create, change, same = self.count(CREATE), self.count(CHANGE), self.count(UNCHANGED)
        verbs = ("created", "changed") if done else ("to create", "to change")
        words = f"{create:,} agent{'s' if create != 1 else ''} {verbs[0]}, {change:,} {verbs[1]}, {same:,} unchanged"
        if self.untouched:
            words += f"; not in the file: {self.untouched:,} agent{'s' if self.untouched != 1 else ''} left as "
            words += "it is" if self.untouched == 1 else "they are"
        return words + "."


def source_for(filename: str) -> str:
    """A version's source: ``file <name>`` (cut to the column's 64 characters)."""
    source = f"file {filename}"
    return source if len(source) <= MAX_SOURCE else source[: MAX_SOURCE - 1] + "…"


def plan(account_id: int, text: str, filename: str = DEFAULT_FILENAME) -> Plan:
    """``text`` read and compared with the account's live policies (nothing is written): two queries, three when a
    changed policy names tools (the unknown-tool warnings)."""
    found = read(text)
    errors = list(found.errors)
    account = Account.objects.select_related("plan").get(pk=account_id)
    named = [entry.agent_id for entry in found.entries]
    live = {
        agent_id: (pk, policy, version)
        for pk, agent_id, policy, version in Agent.objects.filter(account_id=account_id)
        .filter(Q(policy_version__isnull=False) | Q(agent_id__in=named))
        .exclude(agent_id=services.OPERATOR_AGENT)
        .values_list("pk", "agent_id", "policy", "policy_version")
    }
    agents = []
    for entry in found.entries:
        pk, before, version = live.get(entry.agent_id, (None, None, None))
        if version is None:
            action, before = CREATE, None
        else:
            action = UNCHANGED if before == entry.policy else CHANGE
        agents.append(
            AgentPlan(
                agent_id=entry.agent_id,
                line=entry.line,
                policy=entry.policy,
                action=action,
                pk=pk,
                version=version,
                before=before,
                changes=display.policy_changes(before, entry.policy) if action != UNCHANGED else [],
                diff=display.diff_lines(before, entry.policy) if action != UNCHANGED else [],
            )
        )
        if action != UNCHANGED and entry.policy.get("allowed_tools") is not None and not account.plan.has_allowed_tools:
            message = f"allowed_tools needs the Agency plan (this account: {account.plan.name})."
            line = entry.field_lines.get("allowed_tools", entry.line)
            errors.append(Problem(message, "feature_not_available", line, entry.agent_id, "allowed_tools"))
    _warn(account_id, [agent for agent in agents if agent.action != UNCHANGED])
    in_file = set(named)
    untouched = sum(version is not None for agent_id, (_, _, version) in live.items() if agent_id not in in_file)
    errors.sort(key=lambda problem: problem.line or 0)
    return Plan(account_id, filename, sha256_of(text), agents, errors, untouched)


def _warn(account_id: int, agents: list[AgentPlan]) -> None:
    """The unknown-tool warnings of the policy API (services.known_tools), on what the apply would publish."""
    names = {agent.agent_id: policies.named_tools(agent.policy) for agent in agents}
    if not any(names.values()):
        return
    known = {normalise_tool(name) for name in services.known_tools(account_id)}
    for agent in agents:
        for name in sorted(names[agent.agent_id]):
            if normalise_tool(name) not in known:
                agent.warnings.append(
                    f"{name!r} is not a registered tool and no agent of this account has called it yet."
                )


@dataclass
class Applied:
    file: PolicyFile
    plan: Plan
    versions: dict[str, int | None]


def apply(account_id: int, plan: Plan, actor: str) -> Applied:
    """Apply ``plan`` in one transaction, all or nothing: each created or changed agent gets a new version whose
    source is ``file <name>`` (services.policy_publish, audited as every policy change), and the file is recorded
    (``PolicyFile``: the drift view's reference). Refuses a plan with problems (``PlanHasErrors``) and one whose
    agents' versions moved since it was made (``PlanStale``, checked under the agents' row locks): what was shown
    is what is applied."""
    if plan.account_id != account_id:
        raise ValueError("a plan applies to the account it was made for")
    if plan.errors:
        raise PlanHasErrors(plan.errors)
    source = source_for(plan.filename)
    with transaction.atomic():
        names = sorted(agent.agent_id for agent in plan.agents)
        locked = dict(
            Agent.objects.select_for_update()
            .filter(account_id=account_id, agent_id__in=names)
            .order_by("agent_id")
            .values_list("agent_id", "policy_version")
        )
        stale = [agent.agent_id for agent in plan.agents if locked.get(agent.agent_id) != agent.version]
        if stale:
            raise PlanStale(sorted(stale))
        versions: dict[str, int | None] = {}
        for agent in sorted(plan.agents, key=lambda a: a.agent_id):  # one lock order for concurrent applies
            if agent.action == UNCHANGED:
                versions[agent.agent_id] = agent.version
                continue
            try:
                outcome = services.policy_publish(
                    account_id=account_id,
                    agent_id=agent.agent_id,
                    policy=agent.policy,
                    source=source,
                    actor=actor,
                    expected_version=agent.version,
                )
            except services.StalePolicyEdit:
                raise PlanStale([agent.agent_id]) from None
            versions[agent.agent_id] = outcome.version
        record = PolicyFile.objects.create(
            account_id=account_id,
            filename=plan.filename[:255],
            sha256=plan.sha256,
            actor=actor[:200],
            policies={agent.agent_id: agent.policy for agent in plan.agents},
            versions=versions,
        )
        created = [agent.agent_id for agent in plan.agents if agent.action == CREATE]
        changed = [agent.agent_id for agent in plan.agents if agent.action == CHANGE]
        audit_record(
            account=Account.objects.get(pk=account_id),
            actor_label=actor,
            action="governance.policy_file.applied",
            object_type="policy_file",
            object_id=plan.filename,
            data={
                "sha256": plan.sha256,
                "created": created[:AUDITED_NAMES],
                "changed": changed[:AUDITED_NAMES],
                "counts": {
                    "created": len(created),
                    "changed": len(changed),
                    "unchanged": plan.count(UNCHANGED),
                    "not_in_file": plan.untouched,
                },
            },
        )
    return Applied(record, plan, versions)


# --- drift ----------------------------------------------------------------------------------------------------------


@dataclass
class Drifted:
    """An agent whose live policy is not what the last file applied gave it."""

    agent_id: str
    pk: int | None
    reason: str  # "changed" (in the file, changed since), "added" (not in the file, changed since), "gone"
    file_policy: dict[str, Any] | None
    live_policy: dict[str, Any] | None
    version: int | None
    file_version: int | None
    source: str = ""
    by: str = ""
    at: datetime | None = None

    @property
    def diff(self) -> list[str]:
        return display.diff_lines(self.file_policy, self.live_policy)

    @property
    def explanation(self) -> str:
        if self.reason == "gone":
            return "in the file, but the agent no longer exists"
        if self.reason == "added":
            return "not in the file; its policy changed since the file was applied"
        return "its policy changed since the file was applied"


def last_file(account_id: int) -> PolicyFile | None:
    return PolicyFile.objects.filter(account_id=account_id).order_by("-applied_at", "-id").first()


def drift(account_id: int, applied: PolicyFile | None) -> list[Drifted]:
    """The agents whose live policy differs from what ``applied`` (the last file) gave them, and those it did not
    name whose policy changed after it was applied; by agent id. One query."""
    if applied is None:
        return []
    given: dict[str, Any] = applied.policies or {}
    current = PolicyVersion.objects.filter(agent=OuterRef("pk"), version=OuterRef("policy_version"))
    rows = (
        Agent.objects.filter(account_id=account_id)
        .filter(Q(agent_id__in=list(given)) | Q(policy_version__isnull=False))
        .exclude(agent_id=services.OPERATOR_AGENT)
        .annotate(
            v_source=Subquery(current.values("source")[:1]),
            v_by=Subquery(current.values("created_by")[:1]),
            v_at=Subquery(current.values("created_at")[:1]),
        )
        .values_list("pk", "agent_id", "policy", "policy_version", "v_source", "v_by", "v_at")
    )
    found: list[Drifted] = []
    seen = set()
    for pk, agent_id, policy, version, source, by, at in rows:
        seen.add(agent_id)
        file_version = (applied.versions or {}).get(agent_id)
        if agent_id in given:
            if version is not None and policy == given[agent_id]:
                continue
            reason = "changed"
        elif at is not None and at > applied.applied_at:
            reason = "added"
        else:
            continue
        found.append(
            Drifted(
                agent_id, pk, reason, given.get(agent_id), policy, version, file_version, source or "", by or "", at
            )
        )
    found += [
        Drifted(agent_id, None, "gone", policy, None, None, (applied.versions or {}).get(agent_id))
        for agent_id, policy in given.items()
        if agent_id not in seen
    ]
    return sorted(found, key=lambda d: d.agent_id)
