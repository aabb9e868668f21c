"""/v1/approvals: the approval queue for operator tooling (docs/approvals.md)."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class ApprovalListApi(APIView):
    def get(self, request: Request) -> Response:
        return Response(status=501)


class ApprovalApi(APIView):
    def get(self, request: Request, public_id: str) -> Response:
        return Response(status=501)


class ApprovalDecideApi(APIView):
    action = ""

    def post(self, request: Request, public_id: str) -> Response:
        return Response(status=501)
