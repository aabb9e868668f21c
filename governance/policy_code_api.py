"""Policies as code over the API: GET /v1/policies/export and POST /v1/policies/apply (docs/policies-as-code.md)."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class PolicyExportApi(APIView):
    def get(self, request: Request) -> Response:
        return Response(status=501)


class PolicyApplyApi(APIView):
    def post(self, request: Request) -> Response:
        return Response(status=501)
