from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.changes.models import Approval, ChangeRequest, ScheduledChange


class ApprovalSerializer(serializers.ModelSerializer):
    approver = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = Approval
        fields = ["approver", "comment", "at"]


class ChangeRequestSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    decided_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    approvals = ApprovalSerializer(many=True, read_only=True)
    rollout = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="The rollout plan the version is published with; null: every agent at once.",
    )
    base_version = serializers.IntegerField(
        read_only=True, help_text="The version current when it was proposed (0: none yet)."
    )
    comment = serializers.CharField(
        source="decision_comment",
        read_only=True,
        help_text="What the approver who rejected it, or the author who cancelled it, said.",
    )
    publish_at = serializers.DateTimeField(
        source="schedule.publish_at",
        read_only=True,
        allow_null=True,
        help_text="A scheduled change's time: approved before it, the change is published then "
        "(`approved` meanwhile); still pending then, it is `expired`. Null: published at the "
        "last approval.",
    )

    class Meta:
        model = ChangeRequest
        fields = [
            "id",
            "state",
            "base_version",
            "config_url",
            "pooling_interval",
            "rollout",
            "author",
            "approvals",
            "created_at",
            "decided_by",
            "decided_at",
            "comment",
            "published_version",
            "publish_at",
        ]
        read_only_fields = fields


class DiffRowSerializer(serializers.Serializer):
    field = serializers.CharField()
    current = serializers.JSONField(allow_null=True)
    proposed = serializers.JSONField()


class ChangeRequestDetailSerializer(ChangeRequestSerializer):
    current_version = serializers.IntegerField(
        read_only=True, help_text="The version current now, which `diff` compares against."
    )
    diff = DiffRowSerializer(
        many=True,
        read_only=True,
        help_text="The fields whose proposed value differs from the current version's.",
    )

    class Meta(ChangeRequestSerializer.Meta):
        fields = [*ChangeRequestSerializer.Meta.fields, "current_version", "diff"]
        read_only_fields = fields


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=1000, default="")


class ChangeQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=[value for value, _ in ChangeRequest.STATES], required=False
    )


class StaleChangeSerializer(serializers.Serializer):
    detail = serializers.CharField()
    current_version = serializers.IntegerField()


class ScheduledChangeSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="This scheduled change's own route.")
    author = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    decided_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    rollout = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="The rollout plan the version is published with; null: every agent at once.",
    )
    base_version = serializers.IntegerField(
        read_only=True,
        help_text="The version current when it was scheduled (0: none yet). If another version "
        "is current at its time, it is `stale` and nothing is published.",
    )
    reason = serializers.CharField(
        read_only=True,
        help_text="Why it was not published: stale, expired, failed, or the canceller's comment.",
    )

    class Meta:
        model = ScheduledChange
        fields = [
            "id",
            "url",
            "state",
            "publish_at",
            "base_version",
            "config_url",
            "pooling_interval",
            "rollout",
            "author",
            "change_request",
            "created_at",
            "decided_at",
            "decided_by",
            "reason",
            "published_version",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_url(self, scheduled: ScheduledChange) -> str:
        return scheduled_url(scheduled)


def scheduled_url(scheduled: ScheduledChange) -> str:
    """Under its scope's names, so that it is the same from whichever route it was made."""
    return reverse(
        "scoped-scheduled-change",
        kwargs={
            "application": scheduled.scope.application.name,
            "environment": scheduled.scope.environment.name,
            "scheduled_id": scheduled.pk,
        },
    )


class ScheduledQuerySerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=[value for value, _ in ScheduledChange.STATES], required=False
    )
