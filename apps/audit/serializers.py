from rest_framework import serializers

from apps.audit.models import AuditEntry
from protocol.rules import SCOPE_NAME_PATTERN


class AuditEntrySerializer(serializers.ModelSerializer):
    detail = serializers.DictField(
        read_only=True,
        help_text="What changed: before and after for config changes, the admin's change "
        "message, the login channel. Never a password or a token.",
    )

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "action",
            "actor",
            "source_ip",
            "target",
            "application",
            "environment",
            "detail",
        ]
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
    application = serializers.RegexField(
        SCOPE_NAME_PATTERN,
        required=False,
        help_text="Only entries about this application's scopes.",
    )
    environment = serializers.RegexField(
        SCOPE_NAME_PATTERN,
        required=False,
        help_text="Only entries about scopes of this environment.",
    )
