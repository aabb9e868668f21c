"""Policies as code (governance/policy_code.py, docs/policies-as-code.md): the export, its round trip (export → apply
creates no version), a changed file applied atomically (each changed agent one version whose source names the
file; nothing at all when one agent is invalid, the error naming its line), the file's problems with their lines
(YAML syntax, size, unknown fields, agent ids), the CLI's dry run, output and exit codes, the API's dry run and
apply, and the drift from the last file applied."""

from __future__ import annotations

import io
import json
import re
from urllib.parse import quote

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import AuditEntry, Plan
from billing.services import account_set_plan
from governance import policy_code, services
from governance.models import Agent, PolicyFile, PolicyVersion
from tests.conftest import make_key

JSON = "application/json"
# Policies with every field, and the identifiers a file must quote or keep as they are.
POLICIES = {
    "billing-agent": {
        "blocked_tools": ["delete_*", "stripe.refund"],
        "max_actions_per_hour": 200,
        "max_spend_usd_per_day": 10,
        "max_calls_per_tool": {"send_email": 50, "yes": 3},
        "pricing_rules": [{"tool": "send_email", "price_usd": 0.001}, {"tool": "null", "price_usd": 1e-6}],
        "require_approval": ["stripe.refund", {"tool": "stripe.*", "over_usd": 50}],
        "approval_ttl_seconds": 7200,
    },
    "123": {"max_actions_per_hour": 5},
    "ops:bot/1 #x": {"allowed_tools": ["get_*", "1.5", "true"]},
    "ünïcødé-agent": {"blocked_tools": ["ü.delete"], "max_spend_usd_per_day": 0},
    "a" * 200: {"allowed_tools": []},
    "empty-policy": {},
}


def post(client, path, body):
    return client.post(path, body, content_type=JSON)


def seed(key, policies=POLICIES):
    api = key.client()
    for agent_id, policy in policies.items():
        response = post(api, f"/v1/policies/{quote(agent_id, safe='')}", policy)
        assert response.status_code == 200, response.content


def versions() -> list[tuple[str, int, str]]:
    return list(
        PolicyVersion.objects.order_by("agent__agent_id", "version").values_list("agent__agent_id", "version", "source")
    )


def apply_api(key, text, **extra):
    body = json.dumps({"yaml": text, **extra}, ensure_ascii=False)  # as UTF-8: "é" is 2 bytes, not 6
    return key.client().post("/v1/policies/apply", body.encode(), content_type=JSON)


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line of ``text`` containing ``needle``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# --- export and the round trip ------------------------------------------------------------------------------------


def test_the_export_lists_every_governed_agent_in_order_with_its_version_in_a_comment(key_a, account_a):
    seed(key_a)
    services.agent_get_or_create(account_id=account_a.pk, agent_id="ungoverned")
    services.agent_get_or_create(account_id=account_a.pk, agent_id=services.OPERATOR_AGENT)
    response = key_a.client().get("/v1/policies/export")
    assert response.status_code == 200 and response["Content-Type"] == "application/yaml; charset=utf-8"
    text = response.content.decode()
    lines = text.splitlines()
    assert re.fullmatch(r"# OnceOnly policies of account Acme — exported \d{4}-\d\d-\d\dT\d\d:\d\dZ", lines[0])
    data = yaml.safe_load(text)
    assert list(data["agents"]) == sorted(POLICIES)  # by agent id; the ungoverned and the operator agent left out
    billing = data["agents"]["billing-agent"]
    assert list(billing) == list(POLICIES["billing-agent"])  # the policy's field order
    assert billing["max_spend_usd_per_day"] == 10.0
    comment = lines[line_of(text, "billing-agent:") - 1]
    assert re.search(r"billing-agent:  # v1, api by api key \S+ at \d{4}-\d\d-\d\d \d\d:\d\d UTC$", comment), comment
    assert "blocked_tools: [delete_*, stripe.refund]" in text  # lists of names inline
    assert "  '123':" in text and data["agents"]["123"] == {"max_actions_per_hour": 5}  # quoted: not a number
    assert data["agents"]["empty-policy"] == {}
    assert key_a.client().get("/v1/policies/export", {"format": "json"}).json() == {"yaml": text}


def test_export_then_apply_is_a_no_op(key_a, account_a, write):
    """The acceptance: a file exported and applied back creates no version, through the API and the CLI."""
    seed(key_a)
    before, audited = versions(), AuditEntry.objects.filter(action="governance.policy.updated").count()
    text = key_a.client().get("/v1/policies/export").content.decode()
    answer = apply_api(key_a, text)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["applied"] and body["counts"] == {
        "create": 0,
        "change": 0,
        "unchanged": len(POLICIES),
        "not_in_file": 0,
    }
    assert {agent["action"] for agent in body["agents"]} == {"unchanged"}
    assert versions() == before
    assert AuditEntry.objects.filter(action="governance.policy.updated").count() == audited
    out = io.StringIO()
    call_command("policies", "export", "--account", "Acme", stdout=out)
    exported = out.getvalue()
    assert yaml.safe_load(exported) == yaml.safe_load(text)
    path = write(exported)
    out = io.StringIO()
    call_command("policies", "apply", path, "--account", str(account_a.pk), stdout=out)
    assert "0 agents created, 0 changed, 6 unchanged" in out.getvalue()
    assert versions() == before
    assert PolicyFile.objects.filter(account=account_a).count() == 2  # both applies recorded (the drift's reference)


def test_only_values_count_not_order_quoting_style_or_comments(key_a, account_a):
    seed(key_a, {"billing-agent": POLICIES["billing-agent"]})
    text = """\
# written by hand
agents:
  "billing-agent": {approval_ttl_seconds: 7200.0, max_spend_usd_per_day: 10,   # an int for a float, a float count
    require_approval: ['stripe.refund', {over_usd: 50, tool: 'stripe.*'}], max_actions_per_hour: 200,
    pricing_rules: [{price_usd: 0.001, tool: send_email}, {tool: "null", price_usd: 0.000001}],
    blocked_tools: [" delete_*", delete_*, stripe.refund], max_calls_per_tool: {"send_email": 50, "yes": 3}}
"""
    plan = policy_code.plan(account_a.pk, text, "f.yaml")
    assert plan.ok and [agent.action for agent in plan.agents] == ["unchanged"], plan.agents[0].changes


@pytest.fixture
def write(tmp_path):
    """write(text) → the path of a new file holding it."""
    made = []

    def write(text: str | bytes, name: str = "") -> str:
        path = tmp_path / (name or f"policies-{len(made)}.yaml")
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        made.append(path)
        return str(path)

    return write


# --- a changed file -----------------------------------------------------------------------------------------------

CHANGED = """\
agents:
  billing-agent:
    blocked_tools: [delete_*, drop_*]
    max_spend_usd_per_day: 5
  new-agent:
    max_actions_per_hour: 30
  support-bot: {max_actions_per_hour: 100}
"""


def test_a_changed_file_applies_each_change_as_one_version_naming_the_file(key_a, account_a):
    seed(key_a, {"billing-agent": {"blocked_tools": ["delete_*"], "max_spend_usd_per_day": 10}})
    seed(key_a, {"support-bot": {"max_actions_per_hour": 100}, "left-alone": {"max_actions_per_hour": 1}})
    dry = apply_api(key_a, CHANGED, filename="prod.yaml", dry_run=True).json()
    assert not dry["applied"] and dry["summary"] == (
        "1 agent to create, 1 to change, 1 unchanged; not in the file: 1 agent left as it is."
    )
    billing = dry["agents"][0]
    assert (billing["agent_id"], billing["line"], billing["action"]) == ("billing-agent", 2, "change")
    assert (billing["version"], billing["new_version"]) == (1, 2)
    assert [change["text"] for change in billing["changes"]] == [
        "blocked_tools: + drop_*",
        "max_spend_usd_per_day: $10.00 → $5.00",
    ]
    assert '+    "drop_*"' in billing["diff"] and '-  "max_spend_usd_per_day": 10.0' in billing["diff"]
    assert dry["agents"][1]["action"] == "create" and dry["agents"][1]["new_version"] == 1
    assert not PolicyFile.objects.exists() and not Agent.objects.filter(agent_id="new-agent").exists()

    applied = apply_api(key_a, CHANGED, filename="prod.yaml").json()
    assert applied["applied"] and [a["new_version"] for a in applied["agents"]] == [2, 1, None]
    made = PolicyVersion.objects.filter(source="file prod.yaml").order_by("agent__agent_id")
    actor = PolicyVersion.objects.get(source="api", agent__agent_id="billing-agent").created_by  # "api key once_…"
    assert [(v.agent.agent_id, v.version, v.created_by) for v in made] == [
        ("billing-agent", 2, actor),
        ("new-agent", 1, actor),
    ]
    assert Agent.objects.get(agent_id="billing-agent").policy == {
        "blocked_tools": ["delete_*", "drop_*"],
        "max_spend_usd_per_day": 5.0,
    }
    assert Agent.objects.get(agent_id="left-alone").policy_version == 1
    record = PolicyFile.objects.get()
    assert (record.filename, record.sha256) == ("prod.yaml", policy_code.sha256_of(CHANGED))
    assert record.versions == {"billing-agent": 2, "new-agent": 1, "support-bot": 1}
    entry = AuditEntry.objects.get(action="governance.policy_file.applied")
    assert entry.data["created"] == ["new-agent"] and entry.data["changed"] == ["billing-agent"]
    # Applied again: nothing more.
    assert apply_api(key_a, CHANGED, filename="prod.yaml").json()["counts"]["unchanged"] == 3
    assert PolicyVersion.objects.filter(source="file prod.yaml").count() == 2


def test_a_file_with_one_invalid_agent_changes_nothing_and_names_the_line(key_a, account_a):
    """The acceptance: every agent valid but one → a 422 naming the file line, agent and field; nothing written."""
    seed(key_a, {"billing-agent": {"max_spend_usd_per_day": 10}})
    text = CHANGED.replace("max_actions_per_hour: 30", "max_actions_per_hour: -30")
    before = versions()
    response = apply_api(key_a, text, filename="prod.yaml")
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "int_type",
            "loc": ["body", "yaml", "agents", "new-agent", "max_actions_per_hour"],
            "msg": "prod.yaml:6: new-agent: max_actions_per_hour: Must be a whole number from 0 to 1,000,000,000.",
            "line": 6,
            "agent": "new-agent",
            "field": "max_actions_per_hour",
        }
    ]
    assert versions() == before and not PolicyFile.objects.exists()
    assert not Agent.objects.filter(agent_id__in=["new-agent", "support-bot"]).exists()
    assert apply_api(key_a, text, dry_run=True).status_code == 422  # a dry run says the same


def test_a_failure_during_the_apply_rolls_every_agent_back(key_a, account_a, monkeypatch):
    seed(key_a, {"billing-agent": {"max_spend_usd_per_day": 10}})
    plan = policy_code.plan(account_a.pk, CHANGED, "prod.yaml")
    publish = services.policy_publish
    done = []

    def failing(**kwargs):
        if done:
            raise RuntimeError("the database went away")
        done.append(kwargs["agent_id"])
        return publish(**kwargs)

    monkeypatch.setattr(services, "policy_publish", failing)
    with pytest.raises(RuntimeError):
        policy_code.apply(account_a.pk, plan, "alice")
    assert done == ["billing-agent"]  # its version was written, then rolled back with the rest
    assert versions() == [("billing-agent", 1, "api")]
    assert not PolicyFile.objects.exists() and not Agent.objects.filter(agent_id="new-agent").exists()


def test_a_plan_made_stale_by_a_policy_change_applies_nothing(key_a, account_a):
    seed(key_a, {"billing-agent": {"max_spend_usd_per_day": 10}, "support-bot": {"max_actions_per_hour": 100}})
    plan = policy_code.plan(account_a.pk, CHANGED, "prod.yaml")
    seed(key_a, {"support-bot": {"max_actions_per_hour": 7}})  # an agent the plan found unchanged
    with pytest.raises(policy_code.PlanStale) as stale:
        policy_code.apply(account_a.pk, plan, "alice")
    assert stale.value.agents == ["support-bot"]
    assert not PolicyVersion.objects.filter(source__startswith="file").exists()
    with pytest.raises(policy_code.PlanHasErrors):
        policy_code.apply(account_a.pk, policy_code.plan(account_a.pk, "agents: [", "x.yaml"), "alice")


# --- the file's problems, each with its line ----------------------------------------------------------------------


def problems(account, text: str) -> list[str]:
    return [problem.text("f.yaml") for problem in policy_code.plan(account.pk, text, "f.yaml").errors]


def test_yaml_syntax_errors_name_their_line(account_a):
    assert problems(account_a, "agents:\n  bot: {max_actions_per_hour: 5\n  other: {}\n") == [
        "f.yaml:3: Not valid YAML: while parsing a flow mapping did not find expected ',' or '}'."
    ]
    assert problems(account_a, "agents: {}\n---\nagents: {}\n")[0].startswith("f.yaml:2: Not valid YAML: expected a")
    assert problems(account_a, "agents:\n  bot: {a: \x07}\n") == [
        "f.yaml:2: Not valid YAML: unacceptable character #x0007: control characters are not allowed."
    ]
    assert problems(account_a, "agents: " + "[" * 2000) != []  # nesting: refused, not a crash


def test_the_shape_of_the_file_and_of_each_agent(account_a):
    text = """\
agents:
  123: {}
  yes: {}
  onceonly-operator: {}
  nothing:
  a-list: [max_actions_per_hour]
  twice: {}
  twice: {max_actions_per_hour: 1}
  "bad\\u202eid": {}
version: 2
"""
    assert problems(account_a, text) == [
        "f.yaml:2: An agent id is text: '123' reads as another type in YAML; quote it ('123').",
        "f.yaml:3: An agent id is text: 'yes' reads as another type in YAML; quote it ('yes').",
        "f.yaml:4: onceonly-operator: 'onceonly-operator' is reserved for the dashboard's test calls of registered "
        "tools.",
        "f.yaml:5: nothing: No policy (null). Write {} for a policy without limits, or leave the agent out of the "
        "file to keep its policy as it is.",
        "f.yaml:6: a-list: A policy is a mapping of policy fields ({} for a policy without limits).",
        "f.yaml:8: twice: Named twice (also at line 7).",
        "f.yaml:9: bad\u202eid: Control and bidirectional formatting characters are not allowed (found U+202E "
        "(RIGHT-TO-LEFT OVERRIDE)).",
        "f.yaml:10: Unknown key 'version'. A policies file is a mapping with one key, \"agents\": {agent id: policy}.",
    ]
    assert problems(account_a, "- a\n- b\n") == [
        'f.yaml:1: A policies file is a mapping with one key, "agents": {agent id: policy}.'
    ]
    assert problems(account_a, "agent: {}\n")[-1].startswith('f.yaml:1: No "agents" key.')
    # Empty, comments only, or no agent: a file that names nobody changes nothing.
    for empty in ("", "# nothing\n", "agents:\n", "agents: {}\n"):
        plan = policy_code.plan(account_a.pk, empty, "f.yaml")
        assert plan.ok and plan.agents == [], empty


def test_unknown_and_invalid_fields_name_their_line_agent_and_field(account_a):
    text = """\
agents:
  bot:
    max_budget: 5
    agent_id: bot
    blocked_tools:
      - delete_*
      - delete user
    max_calls_per_tool:
      stripe.charge: many
    pricing_rules:
      - {tool: a, price_usd: 1}
      - tool: b
        price_usd: -1
    max_spend_usd_per_day: 1.0e-9
  fine: {max_actions_per_hour: 1}
"""
    fields = "allowed_tools, blocked_tools, max_actions_per_hour, max_spend_usd_per_day, max_calls_per_tool, "
    fields += "pricing_rules, require_approval, approval_ttl_seconds, max_actions_per_run, max_spend_usd_per_run, "
    fields += "max_calls_per_tool_per_run, max_run_seconds, alert_thresholds, detectors"
    assert problems(account_a, text) == [
        f"f.yaml:3: bot: max_budget: Unknown field. Policy fields: {fields}.",
        f"f.yaml:4: bot: agent_id: Unknown field. Policy fields: {fields}.",
        "f.yaml:7: bot: blocked_tools: 'delete user': A tool name has no whitespace or control characters (found "
        "U+0020 (SPACE)).",
        "f.yaml:9: bot: max_calls_per_tool.stripe.charge: Must be a whole number from 0 to 1,000,000,000.",
        "f.yaml:13: bot: pricing_rules.1.price_usd: Must be a number from 0 to 10,000,000.",
        "f.yaml:14: bot: max_spend_usd_per_day: Rounds to 0 (amounts are kept to 6 decimals): write 0, or at least "
        "0.000001.",
    ]


def test_size_bounds(key_a, account_a, monkeypatch):
    big = "agents: {}\n# " + "x" * policy_code.MAX_BYTES + "\n"
    assert problems(account_a, big) == [f"f.yaml: The file is {len(big):,} bytes; at most 1,048,576 (1 MiB)."]
    answer = apply_api(key_a, big)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "yaml"]  # the body's own bound (characters) first
    wide = "agents: {}\n# " + "é" * (policy_code.MAX_BYTES // 2)  # fewer characters than the bound, more bytes
    detail = apply_api(key_a, wide).json()["detail"]
    assert detail[0]["type"] == "too_long" and detail[0]["loc"] == ["body", "yaml"], detail
    monkeypatch.setattr(policy_code, "MAX_AGENTS", 3)
    many = "agents:\n" + "".join(f"  a{n}: {{}}\n" for n in range(4))
    assert problems(account_a, many) == ["f.yaml:2: The file names 4 agents; at most 3."]


def test_allowed_tools_needs_the_plan_unless_the_agent_is_unchanged(key_a, account_a):
    seed(key_a, {"reader": {"allowed_tools": ["get_*"]}})
    account_set_plan(account=account_a, plan=Plan.objects.get(code="pro"))  # a downgrade
    keep = "agents:\n  reader: {allowed_tools: [get_*]}\n"
    assert problems(account_a, keep) == []  # unchanged: nothing to refuse
    change = "agents:\n  reader:\n    allowed_tools: [get_*, list_*]\n"
    assert problems(account_a, change) == [
        "f.yaml:3: reader: allowed_tools: allowed_tools needs the Agency plan (this account: Pro)."
    ]


def test_unknown_tools_are_warnings(key_a, account_a):
    plan = policy_code.plan(account_a.pk, "agents:\n  bot: {blocked_tools: [stripe.charge, delete_*]}\n", "f.yaml")
    assert plan.ok and plan.agents[0].warnings == [
        "'stripe.charge' is not a registered tool and no agent of this account has called it yet."
    ]


# --- the API ------------------------------------------------------------------------------------------------------


def test_the_api_answers_errors_in_json_and_is_gated_by_the_plan(key_a, account_a):
    api = key_a.client()
    assert api.get("/v1/policies/export", HTTP_ACCEPT="application/yaml").status_code == 200
    assert api.get("/v1/policies/export", HTTP_ACCEPT="application/json").json() == {
        "yaml": policy_code.export(account_a.pk)
    }
    wrong = api.get("/v1/policies/export", {"format": "xml"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["query", "format"]
    assert api.get("/v1/policies/export", HTTP_ACCEPT="text/html").status_code == 406
    refused = Client(headers={"Authorization": "Bearer x"}).get("/v1/policies/export", HTTP_ACCEPT="application/yaml")
    assert refused.status_code == 403 and refused["Content-Type"] == JSON and "detail" in refused.json()
    bad = post(api, "/v1/policies/apply", {"yaml": 5, "dry_run": "yes", "x": 1})
    assert sorted(tuple(item["loc"]) for item in bad.json()["detail"]) == [
        ("body", "dry_run"),
        ("body", "x"),
        ("body", "yaml"),
    ]
    account_set_plan(account=account_a, plan=Plan.objects.get(code="starter"))
    starter = make_key(account_a)  # a key of the plan as it is now (keys cache their plan)
    for response in (starter.client().get("/v1/policies/export"), apply_api(starter, "agents: {}\n")):
        assert response.status_code == 403 and response.json()["detail"]["error"] == "feature_not_available"


# --- the CLI ------------------------------------------------------------------------------------------------------


def run(*args) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("policies", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue() + str(exc), exc.returncode
    return out.getvalue(), err.getvalue(), 0


def test_the_cli_dry_run_prints_the_diff_and_changes_nothing(key_a, account_a, write):
    seed(key_a, {"billing-agent": {"blocked_tools": ["delete_*"], "max_spend_usd_per_day": 10}})
    path = write(CHANGED, "prod.yaml")
    out, err, status = run("apply", path, "--account", "Acme", "--dry-run", "--diff")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[:3] == [
        "~ billing-agent (line 2): change v1 → v2",
        "    blocked_tools: + drop_*",
        "    max_spend_usd_per_day: $10.00 → $5.00",
    ]
    assert lines[3].startswith("      @@ ") and '      +    "drop_*"' in lines
    assert "+ new-agent (line 5): create v1" in lines and "    max_actions_per_hour: set to 30" in lines
    assert lines[-1] == "prod.yaml (dry run): 2 agents to create, 1 to change, 0 unchanged."
    assert versions() == [("billing-agent", 1, "api")]
    out, err, status = run("apply", path, "--account", "Acme", "--actor", "ci deploy")
    assert status == 0 and out.splitlines()[-1] == "Applied prod.yaml: 2 agents created, 1 changed, 0 unchanged."
    made = PolicyVersion.objects.get(agent__agent_id="billing-agent", version=2)
    assert (made.created_by, made.source) == ("ci deploy", "file prod.yaml")


def test_the_cli_exit_codes(key_a, account_a, account_b, write):
    bad = write("agents:\n  bot:\n    max_spend_usd_per_day: lots\n", "bad.yaml")
    out, err, status = run("apply", bad, "--account", "Acme", "--dry-run")
    assert status == 1
    assert "bad.yaml:3: bot: max_spend_usd_per_day: Must be a number from 0 to 10,000,000." in err.splitlines()
    assert err.endswith("1 problem in bad.yaml; nothing was applied.")
    assert run("apply", bad, "--account", "Acme")[2] == 1 and not Agent.objects.filter(agent_id="bot").exists()
    out, err, status = run("apply", write(b"agents:\n  bot: {}\n  \xff: {}\n", "binary.yaml"), "--account", "Acme")
    assert status == 1 and "binary.yaml:3: Not UTF-8 text." in err
    assert run("apply", "/nonexistent/file.yaml", "--account", "Acme")[2] == 2
    assert run("apply", bad, "--account", "Nope")[2] == 2
    assert run("export")[2] == 2  # two accounts: name one
    out, err, status = run("export", "--account", "Globex")
    assert status == 0 and out.endswith("\nagents: {}\n")


def test_the_cli_export_writes_a_file(key_a, account_a, tmp_path):
    seed(key_a, {"bot": {"max_actions_per_hour": 5}})
    target = tmp_path / "out.yaml"
    _, err, status = run("export", "--account", "Acme", "--output", str(target))
    assert status == 0 and err.strip() == f"Wrote {target}: the policies of 1 agent."
    assert yaml.safe_load(target.read_text())["agents"] == {"bot": {"max_actions_per_hour": 5}}


# --- drift --------------------------------------------------------------------------------------------------------


def test_drift_lists_agents_changed_since_the_last_file(key_a, account_a):
    seed(key_a, {"before-the-file": {"max_actions_per_hour": 1}})
    assert policy_code.drift(account_a.pk, policy_code.last_file(account_a.pk)) == []  # no file yet
    apply_api(key_a, CHANGED, filename="prod.yaml")
    applied = policy_code.last_file(account_a.pk)
    assert policy_code.drift(account_a.pk, applied) == []
    seed(key_a, {"billing-agent": {"max_spend_usd_per_day": 99}, "later": {"max_actions_per_hour": 3}})
    drifted = policy_code.drift(account_a.pk, applied)
    assert [(d.agent_id, d.reason, d.version, d.file_version, d.source) for d in drifted] == [
        ("billing-agent", "changed", 2, 1, "api"),
        ("later", "added", 1, None, "api"),
    ]
    assert (
        '-  "max_spend_usd_per_day": 5.0' in drifted[0].diff and '+  "max_spend_usd_per_day": 99.0' in drifted[0].diff
    )
    # Putting the file's policy back by hand ends that agent's drift; a new file ends the rest.
    seed(key_a, {"billing-agent": {"max_spend_usd_per_day": 5, "blocked_tools": ["delete_*", "drop_*"]}})
    assert [d.agent_id for d in policy_code.drift(account_a.pk, applied)] == ["later"]
    apply_api(key_a, CHANGED, filename="prod.yaml")
    assert policy_code.drift(account_a.pk, policy_code.last_file(account_a.pk)) == []
