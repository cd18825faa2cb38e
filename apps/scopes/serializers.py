from rest_framework import serializers

from apps.agents.services import STATUSES
from apps.rollouts.models import STATES as ROLLOUT_STATES
from apps.rollouts.serializers import RolloutPlanSerializer
from apps.scopes.models import Application, Environment
from protocol.rules import SCOPE_NAME_PATTERN, SCOPE_NAME_RULE

NAME_HELP = f"{SCOPE_NAME_RULE}; it cannot be changed afterwards."


def name_field() -> serializers.RegexField:
    return serializers.RegexField(
        SCOPE_NAME_PATTERN,
        max_length=63,
        help_text=NAME_HELP,
        error_messages={"invalid": f"Use {SCOPE_NAME_RULE}."},
    )


class ApplicationSerializer(serializers.ModelSerializer):
    name = name_field()

    class Meta:
        model = Application
        fields = ["name", "description", "created_at"]
        read_only_fields = ["created_at"]


class ApplicationChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Application
        fields = ["description"]
        extra_kwargs = {"description": {"required": True}}


class AgentCountsSerializer(serializers.Serializer):
    in_sync = serializers.IntegerField()
    behind = serializers.IntegerField()
    stale = serializers.IntegerField()
    revoked = serializers.IntegerField()

    def to_representation(self, instance):
        return {status: instance[status] for status in STATUSES}


class ScopeStatusSerializer(serializers.Serializer):
    environment = serializers.CharField()
    current_version = serializers.IntegerField(help_text="0 before the first version.")
    rollout_state = serializers.ChoiceField(
        choices=ROLLOUT_STATES,
        allow_null=True,
        help_text="The state of the current version's rollout; null when it was published to "
        "every agent at once.",
    )
    agents = AgentCountsSerializer()


class ApplicationDetailSerializer(ApplicationSerializer):
    environments = ScopeStatusSerializer(many=True, read_only=True)

    class Meta(ApplicationSerializer.Meta):
        fields = [*ApplicationSerializer.Meta.fields, "environments"]


class DefaultRolloutField(serializers.JSONField):
    """A rollout plan, checked and completed with its defaults as POST .../rollout does; null
    for none."""

    def to_internal_value(self, data):
        if data is None:
            return None
        plan = RolloutPlanSerializer(data=data)
        plan.is_valid(raise_exception=True)
        return dict(plan.validated_data)


class EnvironmentSerializer(serializers.ModelSerializer):
    name = name_field()
    default_rollout = DefaultRolloutField(
        required=False,
        allow_null=True,
        help_text="The rollout plan (the body of POST /config/admin/rollout) of a change here "
        "that names none; null: a change goes to every agent at once. The first version of a "
        "scope and an emergency publish go at once whatever it says.",
    )

    class Meta:
        model = Environment
        fields = ["name", "order", "approvals_required", "default_rollout", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {
            "order": {"help_text": "Environments are listed by it, lowest first."},
            "approvals_required": {
                "help_text": "How many approvers must say yes to an editor's change here; 0 "
                "publishes at once. Defaults to CONFIG_APPROVALS_REQUIRED.",
                "max_value": 10,
            },
        }


class EnvironmentChangeSerializer(EnvironmentSerializer):
    class Meta(EnvironmentSerializer.Meta):
        fields = ["order", "approvals_required", "default_rollout"]
