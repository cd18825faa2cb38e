from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.configs.models import ConfigVersion
from apps.rollouts.serializers import RolloutPlanSerializer
from protocol.rules import InvalidConfig, check_config_url, check_pooling_interval


class RuleField(serializers.Field):
    """A field checked by one of the shared rules, with no coercion of the raw JSON value."""

    def __init__(self, check, **kwargs) -> None:
        self.check = check
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return self.check(data)
        except InvalidConfig as exc:
            raise serializers.ValidationError(exc.message) from None

    def to_representation(self, value):
        return value


@extend_schema_field({"type": "string", "format": "uri", "maxLength": 2048})
class ConfigUrlField(RuleField):
    def __init__(self, **kwargs) -> None:
        super().__init__(check_config_url, **kwargs)


@extend_schema_field({"type": "integer", "minimum": 30, "maximum": 86400})
class PoolingIntervalField(RuleField):
    def __init__(self, **kwargs) -> None:
        super().__init__(check_pooling_interval, **kwargs)


class JsonBooleanField(serializers.BooleanField):
    """true or false as JSON says them; DRF's own field would also take "yes", 1 and "on"."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.")
        return data


class ConfigWriteSerializer(serializers.Serializer):
    config_url = ConfigUrlField(help_text="Absolute http or https URL, at most 2048 characters.")
    pooling_interval = PoolingIntervalField(
        help_text="The agents' polling period in whole seconds, 30 to 86400."
    )
    emergency = JsonBooleanField(
        required=False,
        default=False,
        help_text="Superusers only: publish at once, without approval, audited as an emergency. "
        "Needs a `reason`.",
    )
    reason = serializers.CharField(
        required=False,
        max_length=500,
        help_text="Why an emergency publish cannot wait for approval.",
    )
    rollout = RolloutPlanSerializer(
        required=False,
        help_text="Roll the new version out in stages (canaries, then waves) instead of to "
        "every agent at once.",
    )

    def validate(self, attrs):
        if attrs.get("emergency") and not attrs.get("reason", "").strip():
            raise serializers.ValidationError({"reason": ["An emergency publish needs a reason."]})
        if "reason" in attrs and not attrs.get("emergency"):
            raise serializers.ValidationError(
                {"reason": ['A reason is only taken with "emergency": true.']}
            )
        return attrs


class ConfigSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConfigVersion
        fields = ["uuid", "version", "config_url", "pooling_interval", "created_at"]


class AdminConfigSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = ConfigVersion
        fields = ["uuid", "version", "config_url", "pooling_interval", "created_at", "created_by"]


class HistoryEntrySerializer(AdminConfigSerializer):
    changed = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="Fields that differ from the previous version.",
    )
    rolled_back_from = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta(AdminConfigSerializer.Meta):
        fields = [*AdminConfigSerializer.Meta.fields, "changed", "rolled_back_from"]


class RollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)

    def to_internal_value(self, data):
        # Refuse "3", 3.0 and true: a version number is a JSON integer.
        if isinstance(data, dict):
            value = data.get("version")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise serializers.ValidationError({"version": ["Must be a whole number."]})
        return super().to_internal_value(data)


class VersionStateSerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="0 while no configuration exists.")
    pooling_interval = serializers.IntegerField(allow_null=True)
    config_url = serializers.CharField(
        allow_null=True, help_text="The version's content: null while no configuration exists."
    )
    uuid = serializers.UUIDField(allow_null=True, help_text="The version's uuid.")


class VersionQuerySerializer(serializers.Serializer):
    version = serializers.IntegerField(
        required=False, min_value=0, help_text="The version the caller already has."
    )
    wait = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=60,
        help_text="Hold the request up to this many seconds until the version differs.",
    )


class StaleVersionSerializer(serializers.Serializer):
    detail = serializers.CharField()
    current_version = serializers.IntegerField(help_text="The newest version now.")
