"""``{{ value|json_pretty }}``: JSON as people read it (sorted keys, indented), for results and event data."""

import json

from django import template

register = template.Library()


@register.filter
def json_pretty(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
