"""The overview's operations panel (governance/overview.py reads it), contributed to "/" through billing/panels.py:
first, across the page, with its time range read from the request (``?range=1h|24h|7d|30d``)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from billing.models import Account
from governance import overview


def operations_panel(account: Account, request: HttpRequest | None = None) -> dict[str, Any]:
    asked = request.GET.get("range") if request is not None else None
    rng = overview.parse_range(asked)
    notice = ""
    if asked and asked not in overview.RANGES:
        notice = f"Range “{asked[:40]}” ignored: choose {', '.join(overview.RANGES)}."
    ops = overview.operations(account.pk, rng, timezone.now())
    return {
        "template": "governance/_operations_panel.html",
        "full_width": True,
        "scripts": ["vendor/chart.umd.min.js", "js/overview_charts.js"],  # static files, in order
        "ops": ops,
        # What static/js/overview_charts.js draws, as a data attribute: htmx (allowScriptTags: false) drops every
        # <script> of swapped-in content, a json_script included, so the live refresh would lose it.
        "charts_json": json.dumps(ops["charts"], separators=(",", ":")),
        "range_notice": notice,
        "refresh_url": f"{reverse('governance:operations')}?range={rng.key}",
    }
