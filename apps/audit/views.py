from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics

from apps.accounts.roles import ANY_ROLE
from apps.audit.models import AuditEntry
from apps.audit.serializers import AuditEntrySerializer, AuditQuerySerializer


@extend_schema_view(
    get=extend_schema(
        tags=["audit"],
        summary="Audit log",
        description="Logins, token refreshes, config changes and rollbacks, registration tokens, "
        "agent registrations and revocations, and changes made in the Django admin, newest "
        "first, each with its actor, source address and time, and the application and environment "
        "it is about (blank for what belongs to no scope: a login, a role).",
        parameters=[AuditQuerySerializer],
        responses={
            200: AuditEntrySerializer(many=True),
            400: OpenApiResponse(description="Unknown action or bad filter."),
        },
    )
)
class AuditLogView(generics.ListAPIView):
    """The audit log, newest first. Read-only: the API offers no way to change an entry."""

    serializer_class = AuditEntrySerializer
    role_rules = {"GET": ANY_ROLE}

    def get_queryset(self):
        query = AuditQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        entries = AuditEntry.objects.order_by("-at", "-id")
        if "action" in query.validated_data:
            entries = entries.filter(action=query.validated_data["action"])
        if "actor" in query.validated_data:
            entries = entries.filter(actor__iexact=query.validated_data["actor"].strip())
        for field in ("application", "environment"):
            if field in query.validated_data:
                entries = entries.filter(**{field: query.validated_data[field]})
        return entries
