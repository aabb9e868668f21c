"""A policy change through the dashboard as an operator makes it: the first POST (editor save, template, rollback)
shows the review (templates/governance/_policy_confirm.html), and its Confirm form posts the change back — the
hidden fields read from the page as a browser would send them."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class _ConfirmForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside, self.action, self.fields = False, None, {}  # type: ignore[var-annotated]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and "data-confirm-form" in a:
            self.inside, self.action = True, a.get("action")
        elif self.inside and tag == "input" and a.get("name") and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value") or ""
        elif self.inside and tag == "input" and a.get("name") and "checked" in a:  # a ticked box
            self.fields[a["name"]] = a.get("value") or "on"

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False


def confirm_form(html: str) -> tuple[str | None, dict[str, str]]:
    """The review page's Confirm form: its action and the fields it posts (hidden ones, ticked boxes); (None, {})
    when the page has none."""
    parser = _ConfirmForm()
    parser.feed(html)
    return parser.action, parser.fields


def confirm(client: Any, review: Any, **extra: str) -> Any:
    """Post the Confirm form of ``review`` (a response showing it), with ``extra`` fields (deny_all="1")."""
    action, fields = confirm_form(review.content.decode())
    assert action is not None, f"no confirm form on the page ({review.status_code})"
    return client.post(action, {**fields, **extra})


def change(client: Any, url: str, data: dict[str, Any], **extra: str) -> Any:
    """A change reviewed and confirmed: the first POST's answer when it shows no review (an error, "No change"),
    else the confirm's."""
    review = client.post(url, data)
    if review.status_code != 200 or b"data-confirm-form" not in review.content:
        return review
    return confirm(client, review, **extra)
