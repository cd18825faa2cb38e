from datetime import timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime
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


# How far ahead a change may be scheduled: further out, the base version it is decided against
# is all but sure to be gone by then.
SCHEDULE_HORIZON = timedelta(days=90)


@extend_schema_field({"type": "string", "format": "date-time"})
class PublishAtField(serializers.Field):
    """A time to come, in ISO 8601 with its offset: a time without one would be read in the
    controller's zone, which the client may not know."""

    def to_internal_value(self, data):
        try:
            when = parse_datetime(data) if isinstance(data, str) else None
        except ValueError:
            when = None
        if when is None:
            raise serializers.ValidationError(
                "Must be a time in ISO 8601, for example 2030-01-31T09:00:00+01:00."
            )
        if when.tzinfo is None:
            raise serializers.ValidationError(
                "Must carry its offset from UTC, for example +01:00 or Z."
            )
        now = timezone.now()
        if when <= now:
            raise serializers.ValidationError("Must be in the future.")
        if when > now + SCHEDULE_HORIZON:
            raise serializers.ValidationError(
                f"Must be at most {SCHEDULE_HORIZON.days} days ahead."
            )
        return when

    def to_representation(self, value):
        return value.isoformat()


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

    publish_at = PublishAtField(
        required=False,
        help_text="Publish at this time (ISO 8601 with its offset, in the future, at most 90 "
        "days ahead) instead of now: the answer is 202 with the scheduled change.",
    )

    def validate(self, attrs):
        if "publish_at" in attrs and attrs.get("emergency"):
            raise serializers.ValidationError(
                {"publish_at": ["An emergency publishes now; it cannot be scheduled."]}
            )
        if "publish_at" in attrs and attrs.get("rollout", {}).get("preflight"):
            raise serializers.ValidationError(
                {
                    "publish_at": [
                        "A scheduled change cannot ask for a pre-flight: nobody would see its "
                        "answer. Run POST /config/admin/preflight before scheduling it."
                    ]
                }
            )
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


class WatchPreflightSerializer(serializers.Serializer):
    """A pre-flight request as a held watch hands it to an agent."""

    id = serializers.CharField()
    config_url = serializers.CharField()
    timeout_seconds = serializers.IntegerField()


class VersionStateSerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="0 while no configuration exists.")
    pooling_interval = serializers.IntegerField(allow_null=True)
    config_url = serializers.CharField(
        allow_null=True, help_text="The version's content: null while no configuration exists."
    )
    uuid = serializers.UUIDField(allow_null=True, help_text="The version's uuid.")
    preflight = WatchPreflightSerializer(
        required=False,
        help_text="Only in a watch's answer (run_controller): a pre-flight for the agent to run "
        "through one of its workers and answer with POST /agent/preflight. The version is the "
        "one the agent already knows; it watches again at once.",
    )


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON integer: "3", 3.0 and true are refused."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be a whole number.")
        return super().to_internal_value(data)


class PreflightSerializer(serializers.Serializer):
    config_url = ConfigUrlField(help_text="The URL to try, by the rules of a config_url.")
    agents = StrictIntegerField(
        required=False, default=3, min_value=1, max_value=20, help_text="How many agents to ask."
    )
    timeout_seconds = StrictIntegerField(
        required=False,
        default=10,
        min_value=1,
        max_value=60,
        help_text="How long to wait for the agents' answers.",
    )


class PreflightResultSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    worker_url = serializers.CharField(allow_null=True)
    status = serializers.IntegerField(allow_null=True, help_text="The upstream's status.")
    elapsed_ms = serializers.FloatField(allow_null=True)
    error = serializers.CharField(
        allow_null=True,
        help_text="Why there was no usable answer; addresses the URL resolved to are left out.",
    )


class PreflightAnswerSerializer(serializers.Serializer):
    config_url = serializers.CharField()
    ok = serializers.BooleanField(
        help_text="A majority of the agents asked answered OK (a status below 500, no error) "
        "within the timeout, and none of them failed."
    )
    results = PreflightResultSerializer(many=True)


class PreflightFailedSerializer(serializers.Serializer):
    detail = serializers.CharField()
    preflight = PreflightAnswerSerializer(help_text="The pre-flight's answer, with its results.")


class AgentPreflightResultSerializer(serializers.Serializer):
    """What an agent posts back: its worker's answer to a pre-flight."""

    id = serializers.RegexField(r"^[0-9a-f]{32}$", help_text="The pre-flight's id.")
    worker_url = serializers.URLField(max_length=2048)
    status = StrictIntegerField(allow_null=True, min_value=0, max_value=999)
    elapsed_ms = serializers.FloatField(min_value=0, max_value=10**7)
    error = serializers.CharField(allow_null=True, max_length=2000, trim_whitespace=False)

    def validate(self, data):
        if data["status"] is None and data["error"] is None:
            raise serializers.ValidationError("Give a status, an error or both.")
        return data


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


class PromoteSerializer(serializers.Serializer):
    from_environment = serializers.CharField(
        max_length=63, help_text="The environment of the same application to take the content from."
    )
    version = serializers.IntegerField(
        required=False, min_value=1, help_text="Its version to take; its current one when left out."
    )
    rollout = RolloutPlanSerializer(
        required=False,
        help_text="Roll the promoted version out in stages; the target environment's default "
        "plan applies when left out.",
    )


class CompareSideSerializer(serializers.Serializer):
    environment = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)
    config_url = serializers.CharField(allow_null=True)
    pooling_interval = serializers.IntegerField(allow_null=True)


def compare_serializer():
    """The answer of GET /apps/{app}/compare, for the schema ("from" is a keyword in Python)."""
    from drf_spectacular.utils import inline_serializer

    return inline_serializer(
        "Comparison",
        fields={
            "application": serializers.CharField(),
            "from": CompareSideSerializer(),
            "to": CompareSideSerializer(),
            "fields": inline_serializer(
                "ComparedField",
                fields={
                    "field": serializers.CharField(),
                    "from": serializers.JSONField(),
                    "to": serializers.JSONField(),
                },
                many=True,
            ),
            "differences": serializers.ListField(child=serializers.CharField()),
            "same": serializers.BooleanField(),
        },
    )
