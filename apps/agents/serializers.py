from rest_framework import serializers

from apps.agents.heartbeats import (
    MAX_HIT_VERSIONS,
    MAX_HITS,
    MAX_VERSION,
    MAX_WORKERS,
    InvalidHeartbeat,
    check_heartbeat,
)
from apps.agents.models import Agent
from apps.agents.services import STATUSES
from protocol.labels import InvalidLabels, check_labels


class LabelsField(serializers.DictField):
    """A mapping of label names to values under the agent's label rules."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("child", serializers.CharField())
        kwargs.setdefault(
            "help_text",
            "Label names and values: 1 to 63 of A-Z a-z 0-9 _ . -, at most 16 labels.",
        )
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return check_labels(data)
        except InvalidLabels as exc:
            raise serializers.ValidationError(str(exc)) from None


class RegistrationTokenSerializer(serializers.Serializer):
    registration_token = serializers.CharField(help_text="Shown once; store it now.")
    expires_at = serializers.DateTimeField()
    labels = serializers.DictField(
        child=serializers.CharField(), help_text="The labels the agent registering with it gets."
    )
    allow_agent_labels = serializers.BooleanField(
        help_text="Whether the agent's own labels are added to these (never over them)."
    )


class TokenQuerySerializer(serializers.Serializer):
    ttl = serializers.IntegerField(
        required=False, min_value=60, max_value=7 * 24 * 3600, help_text="Lifetime in seconds."
    )


class IssueTokenSerializer(TokenQuerySerializer):
    application = serializers.CharField(
        required=False,
        max_length=63,
        help_text="The application of the agent's scope; the default application when left out "
        "(on /apps/{app}/envs/{env}/agent/admin, the path's, and a body naming another is "
        "refused).",
    )
    environment = serializers.CharField(
        required=False,
        max_length=63,
        help_text="The environment of the agent's scope; the default environment when left out.",
    )
    labels = LabelsField(
        required=False,
        default=dict,
        help_text="Labels bound to the agent that registers with the token (`ring: canary`). "
        "Label names and values: 1 to 63 of A-Z a-z 0-9 _ . -, at most 16 labels.",
    )
    allow_agent_labels = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also take the labels the agent sends at registration (its --label values), "
        "except for names the token's labels already bind. Off: the agent's own labels are "
        "left out.",
    )


class AgentLabelsSerializer(serializers.Serializer):
    labels = LabelsField(help_text="The agent's labels from now on, replacing all it had.")


class RegisterSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    hostname = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")
    labels = LabelsField(required=False, default=dict)


class RegisteredSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    agent_token = serializers.CharField(help_text="Shown once; the agent keeps it.")
    version_url = serializers.URLField()
    poll_url = serializers.URLField()
    pooling_interval = serializers.IntegerField(allow_null=True)
    labels = serializers.DictField(
        child=serializers.CharField(),
        help_text="The agent's labels, as its registration token decided them.",
    )


class WorkerStateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2048)
    ok = serializers.BooleanField()
    version = serializers.IntegerField(allow_null=True, min_value=0)


class HitsSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION)
    ok = serializers.IntegerField(min_value=0, max_value=MAX_HITS)
    failed = serializers.IntegerField(min_value=0, max_value=MAX_HITS)


class HeartbeatSerializer(serializers.Serializer):
    """The fields describe the body for the schema; the rules are check_heartbeat's, shared
    with the ASGI front that takes heartbeats without DRF."""

    # The column is a PostgreSQL integer: a larger number is bad input (400), not a database
    # error.
    applied_version = serializers.IntegerField(allow_null=True, min_value=0, max_value=MAX_VERSION)
    workers = WorkerStateSerializer(many=True, max_length=MAX_WORKERS)
    hits = HitsSerializer(
        many=True,
        max_length=MAX_HIT_VERSIONS,
        required=False,
        help_text="Hits per version on the agent's workers since its previous heartbeat.",
    )

    labels = LabelsField(
        required=False,
        help_text="The labels the agent was started with. They change nothing: only an "
        "operator sets an agent's labels; differing ones are counted and logged.",
    )

    def to_internal_value(self, data):
        try:
            return check_heartbeat(data)
        except InvalidHeartbeat as exc:
            raise serializers.ValidationError(exc.errors) from None


class VersionHitsSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    ok = serializers.IntegerField()
    failed = serializers.IntegerField()


class AgentSerializer(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)
    status = serializers.ChoiceField(choices=STATUSES, read_only=True)
    workers = WorkerStateSerializer(many=True, read_only=True)
    labels = serializers.DictField(child=serializers.CharField(), read_only=True)
    target_version = serializers.IntegerField(
        read_only=True,
        help_text="The version the controller answers this agent: during a rollout, the new "
        "version once the agent's wave started, the previous one before; 0 before any config.",
    )
    hits = VersionHitsSerializer(
        source="target_hits",
        read_only=True,
        allow_null=True,
        help_text="The hits the agent's workers served with its target version, all reported "
        "so far; null before any.",
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "hostname",
            "created_at",
            "last_seen",
            "applied_version",
            "workers",
            "is_active",
            "revoked_at",
            "status",
            "labels",
            "target_version",
            "hits",
        ]
