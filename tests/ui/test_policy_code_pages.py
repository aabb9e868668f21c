"""Agents → Policies as code (governance/policy_code_views.py), server-side: the page (download, upload, drift),
an upload's preview (each agent's coloured diff, every problem with its line), Confirm applying exactly what was
shown (a stale preview applies nothing), viewers who download and look, the plan's gate, and pinned query counts."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from billing.models import Account, Plan
from governance import policy_code
from governance.models import Agent, PolicyFile, PolicyVersion
from tests.ui.test_viewer_read_only import post_actions

JSON = "application/json"
FILE = """\
agents:
  billing-agent:
    blocked_tools: [delete_*, drop_*]
    max_spend_usd_per_day: 5
  new-agent: {max_actions_per_hour: 30}
"""


def seed(key, **policies):
    for agent_id, policy in policies.items():
        assert key.client().post(f"/v1/policies/{agent_id}", policy, content_type=JSON).status_code == 200


def upload(client, text: str | bytes, name: str = "prod.yaml"):
    data = text.encode() if isinstance(text, str) else text
    return client.post("/agents/policies/upload/", {"file": SimpleUploadedFile(name, data, "application/yaml")})


def text_of(response) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", response.content.decode()))


@pytest.fixture
def web(owner_a):
    return owner_a.login(Client())


def test_the_agents_page_links_here_and_the_page_offers_download_and_upload(web):
    assert 'href="/agents/policies/"' in web.get("/agents/").content.decode()
    page = web.get("/agents/policies/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'action="/agents/policies/export/"' in html and "/agents/policies/upload/" in post_actions(html)
    assert "No file has been applied yet" in html


def test_the_download_is_the_export(web, key_a, account_a):
    seed(key_a, bot={"max_actions_per_hour": 5})
    response = web.get("/agents/policies/export/")
    assert response.status_code == 200 and response["Content-Type"] == "application/yaml; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="policies-acme-\d{8}\.yaml"', response["Content-Disposition"])
    assert policy_code.read(response.content.decode()).entries[0].policy == {"max_actions_per_hour": 5}


def test_upload_previews_the_diff_then_confirm_applies_it(web, key_a, owner_a):
    seed(key_a, **{"billing-agent": {"blocked_tools": ["delete_*"], "max_spend_usd_per_day": 10}})
    response = upload(web, FILE)
    sha256 = policy_code.sha256_of(FILE)
    assert response.status_code == 302 and response["Location"] == f"/agents/policies/preview/{sha256}/"
    preview = web.get(response["Location"])
    assert preview.status_code == 200
    html, words = preview.content.decode(), text_of(preview)
    assert "1 agent to create, 1 to change, 0 unchanged." in words
    assert "blocked_tools: + drop_*" in words and "max_spend_usd_per_day: $10.00 → $5.00" in words
    assert '<span class="add">+    &quot;drop_*&quot;</span>' in html  # the policy page's coloured diff
    assert '<span class="del">-  &quot;max_spend_usd_per_day&quot;: 10.0</span>' in html
    assert "Line 2 of the file" in words and "version 1 → 2" in words
    assert post_actions(html) == [f"/agents/policies/preview/{sha256}/apply/"]
    assert not PolicyVersion.objects.filter(source="file prod.yaml").exists()  # a preview changes nothing

    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{64})"', html).group(1)
    done = web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": fingerprint}, follow=True)
    assert "Applied prod.yaml: 1 agent created, 1 changed, 0 unchanged." in text_of(done)
    made = PolicyVersion.objects.filter(source="file prod.yaml").order_by("agent__agent_id")
    assert [(v.agent.agent_id, v.version, v.created_by) for v in made] == [
        ("billing-agent", 2, owner_a.email),
        ("new-agent", 1, owner_a.email),
    ]
    assert PolicyFile.objects.get().actor == owner_a.email
    # The preview is gone once applied: its link says so rather than applying again.
    again = web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": fingerprint}, follow=True)
    assert "That preview has expired" in text_of(again) and PolicyVersion.objects.count() == 3


def test_a_stale_confirm_applies_nothing(web, key_a):
    seed(key_a, **{"billing-agent": {"max_spend_usd_per_day": 10}})
    sha256 = policy_code.sha256_of(FILE)
    html = web.get(upload(web, FILE)["Location"]).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{64})"', html).group(1)
    seed(key_a, **{"billing-agent": {"max_spend_usd_per_day": 7}})  # someone changes it meanwhile
    response = web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": fingerprint}, follow=True)
    words = text_of(response)
    assert "The live policies changed since this preview" in words
    assert "max_spend_usd_per_day: $7.00 → $5.00" in words  # the new diff, to confirm again
    assert not PolicyVersion.objects.filter(source__startswith="file").exists()
    # A changed file is another preview: the first one's confirm cannot apply it.
    other = FILE.replace("30", "31")
    upload(web, other)
    assert web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": "0" * 64}).status_code == 302
    assert not PolicyVersion.objects.filter(source__startswith="file").exists()


def test_a_file_with_problems_shows_each_with_its_line_and_no_confirm(web):
    bad = FILE.replace("max_spend_usd_per_day: 5", "max_spend_usd_per_day: lots").replace("30", "-1")
    preview = web.get(upload(web, bad)["Location"])
    assert preview.status_code == 422
    words = text_of(preview)
    assert "2 problems: nothing can be applied" in words
    assert "prod.yaml:4: billing-agent: max_spend_usd_per_day: Must be a number from 0 to 10,000,000." in words
    assert "prod.yaml:5: new-agent: max_actions_per_hour: Must be a whole number from 0 to 1,000,000,000." in words
    assert post_actions(preview.content.decode()) == []
    sha256 = policy_code.sha256_of(bad)
    assert web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": "x"}).status_code == 302
    assert not Agent.objects.filter(agent_id="new-agent").exists()


def test_uploads_that_are_no_policies_file(web):
    too_big = web.post("/agents/policies/upload/", {"file": SimpleUploadedFile("big.yaml", b"#" * (2**20 + 1))})
    assert "big.yaml is 1,048,577 bytes; a policies file is at most 1 MiB" in text_of(web.get(too_big["Location"]))
    binary = upload(web, b"agents:\n  \xff: {}\n", "bin.yaml")
    assert "bin.yaml:2: Not UTF-8 text. Nothing changed." in text_of(web.get(binary["Location"]))
    none = web.post("/agents/policies/upload/", {})
    assert "Choose a policies file" in text_of(web.get(none["Location"]))
    assert "That preview has expired" in text_of(web.get("/agents/policies/preview/not-a-hash/", follow=True))


def test_viewers_download_and_see_the_drift_but_upload_nothing(viewer_a, web, key_a):
    seed(key_a, **{"billing-agent": {"max_spend_usd_per_day": 10}})
    upload(web, FILE)  # an owner's upload, waiting for its Confirm
    viewer = viewer_a.login(Client())
    page = viewer.get("/agents/policies/")
    html = page.content.decode()
    assert page.status_code == 200 and post_actions(html) == [] and 'type="file"' not in html
    assert viewer.get("/agents/policies/export/").status_code == 200
    sha256 = policy_code.sha256_of(FILE)
    preview = viewer.get(f"/agents/policies/preview/{sha256}/")
    assert preview.status_code == 200 and post_actions(preview.content.decode()) == []
    assert upload(viewer, FILE).status_code == 403
    assert viewer.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": "x"}).status_code == 403


def test_a_plan_without_policies_offers_no_upload(web, account_a):
    Account.objects.filter(pk=account_a.pk).update(plan=Plan.objects.get(code="starter"))
    html = web.get("/agents/policies/").content.decode()
    assert post_actions(html) == [] and "Policies are not on the Starter plan" in html
    assert upload(web, FILE).status_code == 403


def test_the_drift_lists_agents_changed_since_the_file_with_links(web, key_a):
    upload(web, FILE)
    sha256 = policy_code.sha256_of(FILE)
    html = web.get(f"/agents/policies/preview/{sha256}/").content.decode()
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{64})"', html).group(1)
    web.post(f"/agents/policies/preview/{sha256}/apply/", {"fingerprint": fingerprint})
    assert "No drift" in text_of(web.get("/agents/policies/"))
    seed(key_a, **{"billing-agent": {"max_spend_usd_per_day": 6}, "newcomer": {"max_actions_per_hour": 1}})
    page = web.get("/agents/policies/")
    html, words = page.content.decode(), text_of(page)
    billing = Agent.objects.get(agent_id="billing-agent")
    assert f'href="/agents/{billing.pk}/policy/"' in html
    assert "2 agents no longer have the policy of that file" in words
    assert "Its policy changed since the file was applied" in words and "v2 (the file left v1), api" in words
    assert "Not in the file; its policy changed since the file was applied" in words
    assert '<span class="add">+  &quot;max_spend_usd_per_day&quot;: 6.0</span>' in html


@pytest.mark.parametrize("agents", [2, 12])
def test_query_counts_do_not_grow_with_agents(web, key_a, agents, django_assert_num_queries):
    text = "agents:\n" + "".join(f"  bot-{n}: {{max_actions_per_hour: {n}}}\n" for n in range(agents))
    location = upload(web, text)["Location"]
    html = web.get(location).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]{64})"', html).group(1)
    web.post(f"{location}apply/", {"fingerprint": fingerprint})
    seed(key_a, **{f"bot-{n}": {"max_actions_per_hour": 100 + n} for n in range(agents)})  # every one drifts
    upload(web, text)
    web.get("/agents/policies/")  # the session's first request warms what it caches
    with django_assert_num_queries(5):  # session, user, memberships, the last file, the agents with their versions
        assert len(re.findall(r"<tr>", web.get("/agents/policies/").content.decode())) == agents + 1
    with django_assert_num_queries(5):  # session, user, memberships, the account with its plan, the agents
        assert web.get(location).status_code == 200


def test_the_crawls_pages_render_for_every_role(owner_a, admin_a, viewer_a):
    """What tests/support/pages.py seeds for the every-page crawl: the drift with 200-character ids and a
    120-character file name, a preview with a change and a create, one with problems."""
    from tests.support.pages import DRIFT_AGENT, NEW_AGENT, POLICY_FILE, policy_code_urls, seed_policy_files

    seed_policy_files(owner_a)
    valid, broken = policy_code_urls()
    for persona in (owner_a, admin_a, viewer_a):
        client = persona.login(Client())
        page = text_of(client.get("/agents/policies/"))
        assert POLICY_FILE in page and DRIFT_AGENT in page and "1 agent no longer has the policy of that file" in page
        preview = client.get(valid)
        assert preview.status_code == 200 and NEW_AGENT in text_of(preview)
        assert len(post_actions(preview.content.decode())) == (0 if persona is viewer_a else 1)
        problems = client.get(broken)
        assert problems.status_code == 422 and f"{POLICY_FILE}:3: {NEW_AGENT}: max_budget: Unknown" in text_of(problems)
