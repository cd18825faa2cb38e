from rest_framework import serializers

from apps.agents.serializers import LabelsField
from apps.rollouts.models import Rollout

MAX_WAVES = 10
MAX_BAKE_SECONDS = 7 * 24 * 3600


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


class RolloutSerializer(serializers.ModelSerializer):
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
