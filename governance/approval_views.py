"""The Approvals pages (docs/approvals.md): the queue and one approval, where admins and owners approve or deny."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound


def queue(request: HttpRequest) -> HttpResponse:
    return HttpResponseNotFound("Approvals page: not built yet.")


def detail(request: HttpRequest, public_id: str) -> HttpResponse:
    return HttpResponseNotFound("Approval page: not built yet.")


def decide(request: HttpRequest, public_id: str) -> HttpResponse:
    return HttpResponseNotFound("Not built yet.")
