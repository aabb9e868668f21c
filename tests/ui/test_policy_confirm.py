"""Safe policy changes on the dashboard (issue 20, build points 1 and 2; docs/operations.md §"Governance pages"):
every change path — save, apply a template, roll back — is reviewed first (the semantic diff, the coloured line diff,
the tool lists checked against the known tools, warnings) and publishes nothing; only its confirm, against the live
version the review was computed on, publishes exactly one version. A change made meanwhile makes the confirm stale:
the review is shown again, against the new live policy. An empty allow-list needs the explicit "Block every tool"
choice; an unknown tool is a warning, never a success; a cap the agent is already past says so with the numbers."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.test import Client

from billing.models import AuditEntry
from governance import policies, services
from governance.models import Agent, PolicyVersion
from tests.support.policy_confirm import confirm, confirm_form
from tests.ui.test_viewer_read_only import post_actions

JSON = "application/json"


def set_policy(key, agent="bot", **fields):
    response = key.client().post(f"/v1/policies/{agent}", fields, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def call(key, agent="bot", tool="send_email", **body):
    response = key.client().post("/v1/ai/run", {"agent_id": agent, "tool": tool, **body}, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def register(key, name):
    tool = {"name": name, "url": f"https://tools.example.com/{name}", "auth": {"secret": "s" * 16}}
    assert key.client().post("/v1/tools", tool, content_type=JSON).status_code == 200


def url(suffix="", agent="bot"):
    return f"/agents/{Agent.objects.get(agent_id=agent).pk}/policy/{suffix}"


def versions():
    return PolicyVersion.objects.count()


def text(response) -> str:
    """The page's text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def review_of(response) -> str:
    html = response.content.decode()
    match = re.search(r"<section class=\"card policy-review\".*?</section>", html, re.S)
    assert match, (response.status_code, text(response)[:600])
    return match.group(0)


def changes(response) -> list[str]:
    items = re.findall(r"<li data-change=\"\w+\" data-field=\"\w+\">(.*?)</li>", review_of(response), re.S)
    return [unescape(item) for item in items]


def warnings(response) -> list[str]:
    found = re.findall(r"<li data-warning=\"(\w+)\">(.*?)</li>", review_of(response), re.S)
    return [f"{code}: " + " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split()) for code, body in found]


def coloured(response) -> tuple[list[str], list[str]]:
    """The review's line diff: the removed and the added lines."""
    review = review_of(response)
    dels = [unescape(line) for line in re.findall(r'<span class="del">(.*?)</span>', review)]
    adds = [unescape(line) for line in re.findall(r'<span class="add">(.*?)</span>', review)]
    return dels, adds


def shown_messages(client, response):
    """The messages the page a redirect leads to shows: [(level tag, text)]."""
    assert response.status_code == 302, (response.status_code, text(response)[:600])
    page = client.get(response["Location"])
    return [(m.tags, str(m)) for m in page.context["messages"]]


@pytest.fixture
def bot(key_a):
    set_policy(key_a, max_actions_per_hour=20, blocked_tools=["delete_*"])
    return Agent.objects.get(agent_id="bot")


@pytest.fixture
def client(owner_a):
    return owner_a.login(Client())


EDIT = {"base_version": "1", "max_actions_per_hour": "1000", "max_spend_usd_per_day": "200", "blocked_tools": ""}


# --- every change path: reviewed first, published once on confirm ----------------------------------------------


def test_a_save_is_reviewed_then_published_once_on_confirm(client, bot):
    review = client.post(url(), EDIT)
    assert review.status_code == 200 and versions() == 1 and Agent.objects.get().policy_version == 1
    assert changes(review) == [
        "blocked_tools: cleared (was delete_*)",
        "max_actions_per_hour: 20 → 1,000",
        "max_spend_usd_per_day: set to $200.00",
    ]
    dels, adds = coloured(review)
    assert '-  "max_actions_per_hour": 20' in dels and '+  "max_actions_per_hour": 1000,' in adds
    assert '+  "max_spend_usd_per_day": 200.0' in adds
    assert "Review the change: version 1 → 2" in text(review)
    # The form stays below the review, as typed, to change and review again.
    assert 'name="max_actions_per_hour" value="1000"' in review.content.decode()
    saved = confirm(client, review)
    assert shown_messages(client, saved) == [("success", "Policy saved as version 2.")]
    agent = Agent.objects.get()
    assert versions() == 2 and agent.policy == {"max_actions_per_hour": 1000, "max_spend_usd_per_day": 200.0}
    assert PolicyVersion.objects.get(version=2).source == "editor"
    # The same confirm posted again (a double click): the policy is already that — no change, no version.
    again = confirm(client, review)
    assert shown_messages(client, again) == [
        ("info", "No change: version 2 is already this policy. Nothing was published.")
    ]
    assert versions() == 2


def test_a_template_is_reviewed_then_published_once_on_confirm(client, bot):
    review = client.post(url("template/"), {"template": "permissive"})
    assert review.status_code == 200 and versions() == 1
    assert changes(review) == [
        "blocked_tools: + drop_*; − delete_*",
        "max_actions_per_hour: 20 → 1,000",
        "max_spend_usd_per_day: set to $200.00",
        "require_approval: set to * over $100.00",
    ]
    dels, adds = coloured(review)
    assert '-    "delete_*"' in dels and '+    "drop_*"' in adds
    assert "Apply the permissive template" in text(review)
    saved = confirm(client, review)
    assert shown_messages(client, saved) == [("success", "Template permissive applied as version 2.")]
    assert versions() == 2 and PolicyVersion.objects.get(version=2).source == "template:permissive"


def test_a_rollback_is_reviewed_then_published_once_on_confirm(client, bot, key_a):
    set_policy(key_a, max_actions_per_hour=1000)  # v2
    review = client.post(url("rollback/"), {"version": "1"})
    assert review.status_code == 200 and versions() == 2
    assert changes(review) == ["max_actions_per_hour: 1,000 → 20"]
    dels, adds = coloured(review)
    assert dels == ['-  "max_actions_per_hour": 1000'] and adds == ['+  "max_actions_per_hour": 20']
    saved = confirm(client, review)
    assert shown_messages(client, saved) == [("success", "Rolled back to version 1: now version 3.")]
    agent = Agent.objects.get()
    assert versions() == 3 and agent.policy == {"blocked_tools": ["delete_*"], "max_actions_per_hour": 20}
    assert PolicyVersion.objects.get(version=3).source == "rollback:1"


def test_the_audit_entry_and_the_audit_log_say_the_same_changes(client, bot):
    confirm(client, client.post(url(), EDIT))
    entry = AuditEntry.objects.filter(action="governance.policy.updated").order_by("-id").first()
    assert entry.data["changes"] == [
        "blocked_tools: cleared (was delete_*)",
        "max_actions_per_hour: 20 → 1,000",
        "max_spend_usd_per_day: set to $200.00",
    ]
    page = client.get("/audit/", {"action": "governance.policy.updated", "actor": "alice"})
    html = page.content.decode()
    listed = re.search(r'<ul class="policy-changes">(.*?)</ul>', html, re.S).group(1)
    assert [unescape(li) for li in re.findall(r"<li>(.*?)</li>", listed)] == entry.data["changes"]
    assert "&quot;changes&quot;" not in html  # not dumped as JSON beside the list


def test_no_change_publishes_nothing_on_every_path(client, bot, key_a):
    same = {"base_version": "1", "max_actions_per_hour": "20", "blocked_tools": "delete_*"}
    assert shown_messages(client, client.post(url(), same)) == [
        ("info", "No change: version 1 is already this policy. Nothing was published.")
    ]
    strict = services.policy_publish(
        account_id=bot.account_id, agent_id="bot", policy=dict(policies.TEMPLATES["strict"]), source="api", actor="t"
    )
    before = versions()
    assert "No change" in shown_messages(client, client.post(url("template/"), {"template": "strict"}))[0][1]
    assert "No change" in shown_messages(client, client.post(url("rollback/"), {"version": str(strict.version)}))[0][1]
    assert versions() == before


# --- a change made meanwhile: the confirm is stale, the review is shown again -----------------------------------


@pytest.mark.parametrize(
    ("suffix", "data"), [("", EDIT), ("template/", {"template": "strict"}), ("rollback/", {"version": "1"})]
)
def test_a_stale_confirm_publishes_nothing_and_shows_the_new_diff(client, bot, key_a, suffix, data):
    if suffix == "rollback/":
        set_policy(key_a, max_actions_per_hour=500)  # v2, so that there is a version to roll back to
    review = client.post(url(suffix), data)
    assert review.status_code == 200
    live = Agent.objects.get().policy_version
    set_policy(key_a, max_spend_usd_per_day=3)  # someone else's change, meanwhile
    stale = confirm(client, review)
    assert stale.status_code == 409 and versions() == live + 1  # only the other change
    assert f"The policy changed meanwhile: it is now version {live + 1}. Nothing was published." in text(stale)
    assert any("max_spend_usd_per_day" in line for line in changes(stale))  # the new diff: against the new live
    _, fields = confirm_form(stale.content.decode())
    assert fields["expected_version"] == str(live + 1)
    published = confirm(client, stale)  # confirmed again, having seen the new diff
    assert published.status_code == 302 and versions() == live + 2


def test_a_change_that_lands_between_the_check_and_the_publish_is_caught_by_its_lock(client, bot, monkeypatch):
    """policy_publish checks expected_version under the agent row's lock: a change that lands after the view's
    own check is still refused, and the review shown again."""
    review = client.post(url(), EDIT)
    publish = services.policy_publish

    def racing(**kwargs):
        publish(account_id=bot.account_id, agent_id="bot", policy={"max_actions_per_hour": 3}, source="api", actor="t")
        return publish(**kwargs)

    monkeypatch.setattr(services, "policy_publish", racing)
    stale = confirm(client, review)
    assert stale.status_code == 409 and "it is now version 2. Nothing was published." in text(stale)
    assert versions() == 2 and Agent.objects.get().policy == {"max_actions_per_hour": 3}
    assert "max_actions_per_hour: 3 → 1,000" in changes(stale)


@pytest.mark.parametrize("expected", [None, "", "x", "²", "9" * 40, "-1", "2"])
def test_a_confirm_without_the_reviewed_version_is_shown_again(client, bot, expected):
    review = client.post(url("template/"), {"template": "strict"})
    _, fields = confirm_form(review.content.decode())
    fields.pop("expected_version")
    if expected is not None:
        fields["expected_version"] = expected
    response = client.post(url("template/"), fields)
    assert response.status_code == 409 and versions() == 1
    assert "Nothing was published" in text(response)


# --- deny-all by accident -------------------------------------------------------------------------------------


def test_an_empty_allow_list_is_refused_without_the_explicit_choice(client, bot):
    form = {**EDIT, "restrict_tools": "on", "allowed_tools": "  \n"}
    refused = client.post(url(), form)
    assert refused.status_code == 422 and versions() == 1
    assert "The allow-list is empty" in text(refused) and "Block every tool (deny all)" in text(refused)
    # Ticked: the review says it in words you cannot miss, and the confirm carries the choice.
    review = client.post(url(), {**form, "deny_all": "on"})
    assert review.status_code == 200 and versions() == 1
    assert "This policy blocks every tool." in text(review)
    assert "allowed_tools: set to [] — no tool is allowed" in changes(review)
    _, fields = confirm_form(review.content.decode())
    assert fields["deny_all"] == "1"
    # A confirm without the choice (unticked on the review page) is refused too.
    fields.pop("deny_all")
    assert client.post(url(), fields).status_code == 422 and versions() == 1
    saved = confirm(client, review)
    assert saved.status_code == 302 and Agent.objects.get().policy["allowed_tools"] == []
    # The editor shows it back with the choice ticked: saving something else keeps it without asking again.
    html = client.get(url()).content.decode()
    assert re.search(r'<input type="checkbox" name="deny_all"[^>]*checked', html)


def test_the_choice_with_tools_listed_is_contradictory(client, bot):
    response = client.post(url(), {**EDIT, "restrict_tools": "on", "allowed_tools": "send_email", "deny_all": "on"})
    assert response.status_code == 422 and "is ticked but tools are listed as allowed" in text(response)
    assert versions() == 1


def test_a_rollback_to_a_deny_all_version_needs_the_explicit_choice(client, bot, key_a):
    set_policy(key_a, allowed_tools=[])  # v2: deny-all
    set_policy(key_a, allowed_tools=None)  # v3: not
    review = client.post(url("rollback/"), {"version": "2"})
    assert review.status_code == 200 and "This policy blocks every tool." in text(review)
    action, fields = confirm_form(review.content.decode())
    assert "deny_all" not in fields  # not ticked for the operator
    refused = client.post(action, fields)
    assert refused.status_code == 422 and versions() == 3
    assert "This policy allows no tool" in text(refused) and "Block every tool (deny all)" in text(refused)
    saved = confirm(client, review, deny_all="1")
    assert saved.status_code == 302 and Agent.objects.get().policy["allowed_tools"] == [] and versions() == 4


# --- tool lists checked: unknown names warn, globs previewed -----------------------------------------------------


def test_an_unknown_tool_is_a_warning_never_a_success(client, bot, key_a):
    register(key_a, "stripe.charge")
    form = {**EDIT, "blocked_tools": "stripe.charge\nstrpe.refund"}
    review = client.post(url(), form)
    assert warnings(review) == [
        "unknown_tool: warning “strpe.refund” is not a registered tool and no agent of this account has called it "
        "yet: check the spelling."
    ]
    assert re.search(
        r'chip-unknown" data-kind="unknown"><span class="mono">strpe.refund</span> '
        r'<span class="badge badge-warn">unknown tool',
        review_of(review),
    )
    assert re.search(r'chip-known" data-kind="known"><span class="mono">stripe.charge</span>', review_of(review))
    said = shown_messages(client, confirm(client, review))
    successes = [m for tag, m in said if tag == "success"]
    assert successes == ["Policy saved as version 2."]  # the success says nothing about the unknown tool
    assert [tag for tag, m in said if "strpe.refund" in m] == ["warning"]


def test_a_glob_is_previewed_with_what_it_matches(client, bot, key_a):
    register(key_a, "stripe.charge")
    call(key_a, tool="stripe.refund")  # known from the decisions, not registered
    form = {**EDIT, "blocked_tools": "stripe.*\nnothing.*", "require_approval": "STRIPE.? > 5"}
    review = review_of(client.post(url(), form))
    assert re.search(
        r'<span class="mono">stripe\.\*</span> <span class="muted">matches stripe\.charge, '
        r"stripe\.refund</span>",
        review,
    )
    assert re.search(
        r'<span class="mono">nothing\.\*</span> <span class="badge badge-warn">matches no known '
        r"tool</span>",
        review,
    )
    assert "STRIPE.? over $5.00" in unescape(review)
    # The editor draws the chips of its fields too (no JavaScript needed): the live policy's, then what was typed.
    confirm(client, client.post(url(), form))
    editor = client.get(url()).content.decode()
    chips = re.search(
        r'<ul class="chips tool-chips"[^>]*data-chips-for="id_blocked_tools"[^>]*>(.*?)</ul>', editor, re.S
    ).group(1)
    assert "matches stripe.charge, stripe.refund" in chips and "matches no known tool" in chips


# --- over-cap warnings, with the numbers ---------------------------------------------------------------------------


def test_lowering_a_cap_below_todays_usage_warns_with_the_numbers(client, key_a):
    set_policy(key_a, max_actions_per_hour=100, max_spend_usd_per_day=50, max_calls_per_tool={"send_email": 10})
    for n in range(2):
        assert call(key_a, args={"n": n}, spend_usd=6.20)["allowed"]  # $12.40, 2 charged calls, 2 send_email
    form = {
        "base_version": "1",
        "max_actions_per_hour": "2",
        "max_spend_usd_per_day": "10",
        "max_calls_per_tool": "send_email: 1\nother_tool: 0",
    }
    review = client.post(url(), form)
    assert review.status_code == 200 and versions() == 1
    assert warnings(review) == [
        "unknown_tool: warning “other_tool” is not a registered tool and no agent of this account has called it "
        "yet: check the spelling.",
        "over_spend_cap: over a cap This agent already spent $12.40 today; the new cap $10.00 blocks every further "
        "call today.",
        "over_hourly_cap: over a cap This agent made 2 charged calls in the last hour; the new cap of 2 per hour "
        "blocks every further call until that rolling count falls below 2.",
        "over_tool_cap: over a cap send_email was already called 2 times today; the new cap of 1 blocks every "
        "further send_email call today.",
    ]
    # Caps left as they are, or above today's usage, say nothing.
    calm = client.post(
        url(),
        {
            **form,
            "max_actions_per_hour": "100",
            "max_spend_usd_per_day": "12.41",
            "max_calls_per_tool": "send_email: 10",
        },
    )
    assert warnings(calm) == []


# --- the form: real number inputs, bad input is a form error ---------------------------------------------------


def test_numbers_are_number_inputs_with_the_policy_bounds(client, bot):
    html = client.get(url()).content.decode()
    for name, bounds in {
        "max_actions_per_hour": 'min="0" max="1000000000" step="1"',
        "max_spend_usd_per_day": 'min="0" max="10000000" step="0.000001"',
        "approval_ttl_seconds": 'min="60" max="604800" step="1"',
    }.items():
        tag = re.search(rf'<input type="number" name="{name}"[^>]*>', html)
        assert tag and bounds in tag.group(0), (name, tag and tag.group(0))


@pytest.mark.parametrize(
    "bad",
    [
        {"max_actions_per_hour": "lots"},
        {"max_actions_per_hour": "1000000001"},
        {"max_spend_usd_per_day": "1e400"},
        {"approval_ttl_seconds": "9" * 5000},
        {"base_version": "9" * 40},
        {"blocked_tools": "\n".join(f"tool_{n}" for n in range(501))},
        {"max_calls_per_tool": "\n".join(f"tool_{n}: 1" for n in range(501))},
        {"restrict_tools": "on", "allowed_tools": "x" * 201},
    ],
    ids=["words", "over-a-billion", "infinity", "5000-digits", "huge-version", "501-tools", "501-caps", "long-name"],
)
def test_bad_input_is_a_form_error_at_both_steps_and_publishes_nothing(client, bot, bad):
    response = client.post(url(), {**EDIT, **bad})
    assert response.status_code == 422 and 'role="alert"' in response.content.decode()
    assert b"data-confirm-form" not in response.content
    # The same posted as a confirm (forged, or edited on the way): refused the same way.
    forged = client.post(url(), {**EDIT, **bad, "confirm": "1", "expected_version": "1", "deny_all": "1"})
    assert forged.status_code == 422 and versions() == 1


def test_junk_on_the_template_and_rollback_paths_is_refused_without_publishing(client, bot):
    for suffix, data in [
        ("template/", {"template": "nope"}),
        ("template/", {"template": "strict\x00", "confirm": "1", "expected_version": "1"}),
        ("rollback/", {"version": "99", "confirm": "1", "expected_version": "1"}),
        ("rollback/", {"version": "1" * 50}),
    ]:
        response = client.post(url(suffix), data)
        assert response.status_code in (302, 400), (suffix, data, response.status_code)
    assert versions() == 1


# --- who may change -------------------------------------------------------------------------------------------------


def test_a_viewer_gets_no_form_and_no_step(viewer_a, bot):
    client = viewer_a.login(Client())
    html = client.get(url()).content.decode()
    assert post_actions(html) == []
    assert "Review changes" not in html and "Apply strict" not in html and "Roll back" not in html
    for suffix, data in [("", EDIT), ("template/", {"template": "strict"}), ("rollback/", {"version": "1"})]:
        assert client.post(url(suffix), data).status_code == 403
        assert client.post(url(suffix), {**data, "confirm": "1", "expected_version": "1"}).status_code == 403
    assert versions() == 1


def test_an_ungoverned_agent_gets_its_first_version_through_the_review(client, key_a):
    call(key_a, agent="fresh")  # registered by its first call: no policy
    review = client.post(url(agent="fresh"), {"base_version": "", "max_actions_per_hour": "5"})
    assert review.status_code == 200 and not PolicyVersion.objects.exists()
    assert "has no policy yet (ungoverned): this would be its version 1" in text(review)
    assert changes(review) == ["max_actions_per_hour: set to 5"]
    _, fields = confirm_form(review.content.decode())
    assert fields["expected_version"] == ""  # no live version
    assert confirm(client, review).status_code == 302
    assert Agent.objects.get(agent_id="fresh").policy == {"max_actions_per_hour": 5}


def test_a_threshold_on_an_unpriced_tool_is_a_warning_in_the_review(client, bot, key_a):
    call(key_a, tool="stripe.refund", args={"n": 1})  # a known tool without a price
    review = client.post(url(), {**EDIT, "max_actions_per_hour": "20", "require_approval": "stripe.* > 50"})
    assert review.status_code == 200, text(review)[:400]
    [found] = [w for w in warnings(review) if w.startswith("unpriced_threshold")]
    assert "stripe.refund has no price" in found and "over $50.00" in found
