from rest_framework import serializers

from apps.changes.models import Approval, ChangeRequest


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
