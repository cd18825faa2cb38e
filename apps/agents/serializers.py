from rest_framework import serializers

from apps.agents.models import Agent
from apps.agents.services import STATUSES


class RegistrationTokenSerializer(serializers.Serializer):
    registration_token = serializers.CharField(help_text="Shown once; store it now.")
    expires_at = serializers.DateTimeField()


class TokenQuerySerializer(serializers.Serializer):
    ttl = serializers.IntegerField(
        required=False, min_value=60, max_value=7 * 24 * 3600, help_text="Lifetime in seconds."
    )


class RegisterSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    hostname = serializers.CharField(required=False, allow_blank=True, max_length=255, default="")


class RegisteredSerializer(serializers.Serializer):
    agent_id = serializers.UUIDField()
    agent_token = serializers.CharField(help_text="Shown once; the agent keeps it.")
    version_url = serializers.URLField()
    poll_url = serializers.URLField()
    pooling_interval = serializers.IntegerField(allow_null=True)


class WorkerStateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2048)
    ok = serializers.BooleanField()
    version = serializers.IntegerField(allow_null=True, min_value=0)


# One heartbeat counts at most this many hits per version: far more than a worker serves in a
# heartbeat period, and small enough that the totals never near the column's limit.
MAX_HITS_PER_HEARTBEAT = 10**9


class HitsSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    ok = serializers.IntegerField(min_value=0, max_value=MAX_HITS_PER_HEARTBEAT)
    failed = serializers.IntegerField(min_value=0, max_value=MAX_HITS_PER_HEARTBEAT)


class HeartbeatSerializer(serializers.Serializer):
    # The column is a PostgreSQL integer: a larger number is bad input (400), not a database
    # error.
    applied_version = serializers.IntegerField(allow_null=True, min_value=0, max_value=2**31 - 1)
    workers = WorkerStateSerializer(many=True, max_length=100)
    hits = HitsSerializer(
        many=True,
        max_length=100,
        required=False,
        default=list,
        help_text="Hits per version on the agent's workers since its previous heartbeat.",
    )


class VersionHitsSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    ok = serializers.IntegerField()
    failed = serializers.IntegerField()


class AgentSerializer(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)
    status = serializers.ChoiceField(choices=STATUSES, read_only=True)
    workers = WorkerStateSerializer(many=True, read_only=True)
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
            "hits",
        ]
