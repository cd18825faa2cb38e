from functools import partial

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import forbidden
from apps.accounts.roles import ANY_ROLE, APPROVER, EDITOR, OPERATOR
from apps.changes import scheduling, services
from apps.changes.errors import UnknownChange, UnknownScheduledChange
from apps.changes.models import ChangeRequest, ScheduledChange
from apps.changes.serializers import (
    ChangeQuerySerializer,
    ChangeRequestDetailSerializer,
    ChangeRequestSerializer,
    DecisionSerializer,
    ScheduledChangeSerializer,
    ScheduledQuerySerializer,
    StaleChangeSerializer,
)
from apps.scopes.views import ActsOnScope
from controller_site.request_info import client_ip

NOT_FOUND = OpenApiResponse(description="No such change request.")
NOT_PENDING = OpenApiResponse(
    StaleChangeSerializer,
    description="Not pending any more (published, rejected, cancelled or stale), or stale now: "
    "its base version is no longer current (`current_version` says which is). A stale request "
    "must be proposed again.",
)


def _detail(change: ChangeRequest) -> dict:
    current_version, diff = services.diff_against_current(change)
    change.current_version = current_version
    change.diff = diff
    return ChangeRequestDetailSerializer(change).data


def _queryset():
    return ChangeRequest.objects.select_related(
        "author", "decided_by", "schedule"
    ).prefetch_related("approvals__approver")


@extend_schema_view(
    get=extend_schema(
        tags=["changes"],
        summary="Change requests",
        parameters=[ChangeQuerySerializer],
        responses={
            200: ChangeRequestSerializer(many=True),
            400: OpenApiResponse(description="Unknown state."),
        },
    )
)
class ChangeListView(ActsOnScope, generics.ListAPIView):
    """Change requests, newest first."""

    serializer_class = ChangeRequestSerializer
    role_rules = {"GET": ANY_ROLE}

    def get_queryset(self):
        query = ChangeQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        changes = _queryset().filter(scope_id=self.scope_id).order_by("-id")
        if "state" in query.validated_data:
            changes = changes.filter(state=query.validated_data["state"])
        return changes


class ChangeDetailView(ActsOnScope, APIView):
    role_rules = {"GET": ANY_ROLE}

    @extend_schema(
        tags=["changes"],
        summary="One change request, with its diff against the current version",
        responses={
            200: ChangeRequestDetailSerializer,
            404: NOT_FOUND,
        },
    )
    def get(self, request, change_id: int):
        change = _queryset().filter(pk=change_id, scope_id=self.scope_id).first()
        if change is None:
            raise UnknownChange(change_id)
        return Response(_detail(change))


def _decided(view: ActsOnScope, request, change_id: int, decide) -> Response:
    """approve, reject or cancel: a comment in, the change request with its diff out."""
    body = DecisionSerializer(data=request.data if request.body else {})
    body.is_valid(raise_exception=True)
    change = decide(
        change_id,
        scope_id=view.scope_id,
        comment=body.validated_data["comment"],
        source_ip=client_ip(request),
    )
    return Response(_detail(_queryset().get(pk=change.pk)))


def _decision_schema(summary: str, description: str):
    return extend_schema(
        tags=["changes"],
        summary=summary,
        description=description,
        request=DecisionSerializer,
        responses={
            200: ChangeRequestDetailSerializer,
            400: OpenApiResponse(description="Bad comment."),
            404: NOT_FOUND,
            409: NOT_PENDING,
        },
    )


class ApproveChangeView(ActsOnScope, APIView):
    role_rules = {"POST": APPROVER}

    @_decision_schema(
        "Approve a change request",
        "By an approver other than its author (403 otherwise). When the approvals reach "
        "CONFIG_APPROVALS_REQUIRED the change is published, with its rollout plan, and "
        "`published_version` names the new version.",
    )
    def post(self, request, change_id: int):
        return _decided(
            self, request, change_id, partial(services.approve_change, approver=request.user)
        )


class RejectChangeView(ActsOnScope, APIView):
    role_rules = {"POST": APPROVER}

    @_decision_schema(
        "Reject a change request",
        "By an approver other than its author (the author cancels instead).",
    )
    def post(self, request, change_id: int):
        return _decided(
            self, request, change_id, partial(services.reject_change, approver=request.user)
        )


class CancelChangeView(ActsOnScope, APIView):
    role_rules = {"POST": EDITOR}

    @_decision_schema(
        "Cancel a change request", "By its author (or a superuser); 403 for anyone else."
    )
    def post(self, request, change_id: int):
        return _decided(
            self, request, change_id, partial(services.cancel_change, actor=request.user)
        )


def _scheduled():
    return ScheduledChange.objects.select_related(
        "author", "decided_by", "scope__application", "scope__environment"
    )


@extend_schema_view(
    get=extend_schema(
        tags=["changes"],
        summary="Scheduled changes",
        description="Changes made with `publish_at`, the next to be published first, then those "
        "decided (published, stale, cancelled, expired, failed).",
        parameters=[ScheduledQuerySerializer],
        responses={
            200: ScheduledChangeSerializer(many=True),
            400: OpenApiResponse(description="Unknown state."),
        },
    )
)
class ScheduledListView(ActsOnScope, generics.ListAPIView):
    serializer_class = ScheduledChangeSerializer
    role_rules = {"GET": ANY_ROLE}

    def get_queryset(self):
        query = ScheduledQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        scheduled = _scheduled().filter(scope_id=self.scope_id)
        if "state" in query.validated_data:
            scheduled = scheduled.filter(state=query.validated_data["state"])
        return scheduled.order_by("publish_at", "id")


NO_SCHEDULED = OpenApiResponse(description="No such scheduled change in this scope.")


class ScheduledDetailView(ActsOnScope, APIView):
    role_rules = {"GET": ANY_ROLE}

    @extend_schema(
        tags=["changes"],
        summary="One scheduled change",
        responses={200: ScheduledChangeSerializer, 404: NO_SCHEDULED},
    )
    def get(self, request, scheduled_id: int):
        scheduled = _scheduled().filter(pk=scheduled_id, scope_id=self.scope_id).first()
        if scheduled is None:
            raise UnknownScheduledChange(scheduled_id)
        return Response(ScheduledChangeSerializer(scheduled).data)


class CancelScheduledView(ActsOnScope, APIView):
    # Any role reaches the service, which lets the author or an operator of the scope cancel.
    role_rules = {"POST": ANY_ROLE}

    @extend_schema(
        tags=["changes"],
        summary="Cancel a scheduled change",
        description="By its author or an operator of its scope (403 for anyone else), before "
        "its time; its change request, if any, is cancelled with it. Audited.",
        request=DecisionSerializer,
        responses={
            200: ScheduledChangeSerializer,
            400: OpenApiResponse(description="Bad comment."),
            403: forbidden(OPERATOR),
            404: NO_SCHEDULED,
            409: OpenApiResponse(
                description="Not scheduled any more: published, stale, cancelled, expired or "
                "failed."
            ),
        },
    )
    def post(self, request, scheduled_id: int):
        body = DecisionSerializer(data=request.data if request.body else {})
        body.is_valid(raise_exception=True)
        scheduled = scheduling.cancel_scheduled_change(
            scheduled_id,
            scope_id=self.scope_id,
            actor=request.user,
            comment=body.validated_data["comment"],
            source_ip=client_ip(request),
        )
        return Response(ScheduledChangeSerializer(_scheduled().get(pk=scheduled.pk)).data)
