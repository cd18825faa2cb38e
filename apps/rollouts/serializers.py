from rest_framework import serializers

from apps.agents.serializers import LabelsField
from apps.rollouts.models import Rollout

MAX_WAVES = 10
MAX_BAKE_SECONDS = 7 * 24 * 3600
MAX_MIN_HITS = 10**9


class StrictBooleanField(serializers.BooleanField):
    """true or false, as JSON has them: "yes", 1 and "true" are refused."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.")
        return data


class RateField(serializers.FloatField):
    """A JSON number from 0 to 1: a string, true or a NaN is refused."""

    def __init__(self, **kwargs) -> None:
        super().__init__(min_value=0, max_value=1, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float) or data != data:
            raise serializers.ValidationError("Must be a number from 0 to 1.")
        return super().to_internal_value(data)


class CountField(serializers.IntegerField):
    """A JSON whole number: "20", 20.0 and true are refused."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be a whole number.")
        return super().to_internal_value(data)


class RolloutPlanSerializer(serializers.Serializer):
    """A rollout plan: canaries first, then cumulative waves of the other agents."""

    canary_labels = LabelsField(
        required=False,
        default=dict,
        help_text="Agents carrying every one of these labels form wave 0, the canaries. "
        "Empty: no canaries.",
    )
    waves = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=100),
        required=False,
        default=[100],
        min_length=1,
        max_length=MAX_WAVES,
        help_text="Cumulative percentages of the other agents, rising, ending at 100.",
    )
    bake_seconds = serializers.IntegerField(
        required=False,
        default=0,
        min_value=0,
        max_value=MAX_BAKE_SECONDS,
        help_text="How long each wave runs, once applied by all its live agents, before the "
        "next starts.",
    )
    auto_rollback = StrictBooleanField(
        required=False,
        default=True,
        help_text="When the new version fails too often: true halts the rollout and puts every "
        "agent back on the previous version's content at once; false only pauses it for an "
        "operator.",
    )
    max_failure_rate = RateField(
        required=False,
        default=0.2,
        help_text="An agent whose own failed / (ok + failed) hits of the new version are above "
        "this (0 to 1), and above its own with the previous version, fails it; the rollout is "
        "stopped when the failing agents are more than half of those judged and at least two "
        "(or the only agent targeted).",
    )
    min_hits = CountField(
        required=False,
        default=20,
        min_value=1,
        max_value=MAX_MIN_HITS,
        help_text="Hits of the new version an agent needs before its failure rate is judged.",
    )
    wave_timeout_seconds = CountField(
        required=False,
        default=None,
        allow_null=True,
        min_value=1,
        max_value=MAX_BAKE_SECONDS,
        help_text="How long a started wave may take to be applied by all its live agents; "
        "past it the rollout pauses, naming the agents that did not apply. Null (the default): "
        "it waits as long as it takes.",
    )
    preflight = StrictBooleanField(
        required=False,
        default=False,
        help_text="Pre-flight the URL on a few live agents first (as POST "
        "/config/admin/preflight with its defaults): when no fetch succeeds, the publish is "
        "refused with 422 and the results, and nothing is stored.",
    )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field of a rollout plan."] for name in unknown}
                )
        return super().to_internal_value(data)

    def validate_waves(self, waves: list[int]) -> list[int]:
        if any(later <= earlier for earlier, later in zip(waves, waves[1:], strict=False)):
            raise serializers.ValidationError("Waves must rise: each above the one before.")
        if waves[-1] != 100:
            raise serializers.ValidationError("The last wave must be 100: every agent.")
        return waves


class HitsSerializer(serializers.Serializer):
    ok = serializers.IntegerField()
    failed = serializers.IntegerField()
    failure_rate = serializers.FloatField(
        allow_null=True, help_text="failed / (ok + failed); null without hits."
    )


class RolloutHealthSerializer(serializers.Serializer):
    version = HitsSerializer(
        help_text="The new version's hits over all agents, since the rollout started (or was "
        "last resumed)."
    )
    previous_version = HitsSerializer(help_text="The previous version's hits over all agents.")


class RolloutSerializer(serializers.ModelSerializer):
    health = RolloutHealthSerializer(
        help_text="The hits the health gate judges: the new version's beside the previous one's."
    )
    agents_total = serializers.IntegerField(help_text="Agents not revoked.")
    agents_targeted = serializers.IntegerField(help_text="Agents the started waves reach.")
    agents_applied = serializers.IntegerField(
        help_text="Agents of the started waves that applied the version."
    )

    class Meta:
        model = Rollout
        fields = [
            "version",
            "previous_version",
            "state",
            "wave",
            "waves",
            "canary_labels",
            "bake_seconds",
            "auto_rollback",
            "max_failure_rate",
            "min_hits",
            "wave_timeout_seconds",
            "health",
            "agents_total",
            "agents_targeted",
            "agents_applied",
            "started_at",
            "updated_at",
            "reason",
        ]


class RolloutActionSerializer(serializers.Serializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, default="", help_text="Why; audited."
    )
