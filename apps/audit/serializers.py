from rest_framework import serializers

from apps.audit.models import AuditEntry


class AuditEntrySerializer(serializers.ModelSerializer):
    detail = serializers.DictField(
        read_only=True,
        help_text="What changed: before and after for config changes, the admin's change "
        "message, the login channel. Never a password or a token.",
    )

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "action", "actor", "source_ip", "target", "detail"]
        read_only_fields = fields


class AuditQuerySerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=[value for value, _ in AuditEntry.ACTIONS], required=False
    )
    actor = serializers.CharField(
        required=False,
        max_length=254,
        help_text="An admin's email, agent:<id> or system; case-insensitive.",
    )
