from rest_framework import serializers

from apps.scopes.models import Application, Environment
from apps.webhooks import services
from apps.webhooks.errors import RefusedWebhookURL
from apps.webhooks.events import ALL_EVENTS, SUBSCRIBABLE
from apps.webhooks.models import Delivery, WebhookEndpoint
from protocol.rules import MAX_URL_LENGTH, SCOPE_NAME_PATTERN, is_http_url


class NamesField(serializers.ListField):
    """Application or environment names that exist; an empty list means every one."""

    def __init__(self, model, **kwargs) -> None:
        self.model = model
        kwargs.setdefault("child", serializers.RegexField(SCOPE_NAME_PATTERN, max_length=63))
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 100)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        names = sorted(set(super().to_internal_value(data)))
        known = set(self.model.objects.filter(name__in=names).values_list("name", flat=True))
        unknown = [name for name in names if name not in known]
        if unknown:
            kind = self.model._meta.verbose_name
            raise serializers.ValidationError(f"No {kind} named {', '.join(unknown)}.")
        return names


class WebhookSerializer(serializers.ModelSerializer):
    """An endpoint as every answer shows it: never its secret."""

    url = serializers.CharField(
        max_length=MAX_URL_LENGTH,
        help_text="An absolute http or https URL. Private, loopback and link-local addresses "
        "are refused unless WEBHOOKS_BLOCK_PRIVATE_URLS is off.",
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=[*SUBSCRIBABLE, ALL_EVENTS]),
        allow_empty=False,
        max_length=len(SUBSCRIBABLE) + 1,
        help_text='The event types to send, or ["*"] for every one.',
    )
    applications = NamesField(Application, help_text="Application names; empty: every one.")
    environments = NamesField(Environment, help_text="Environment names; empty: every one.")

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "events",
            "applications",
            "environments",
            "enabled",
            "description",
            "created_at",
            "failing_since",
            "disabled_reason",
            "previous_secret_expires_at",
        ]
        read_only_fields = [
            "id",
            "created_at",
            "failing_since",
            "disabled_reason",
            "previous_secret_expires_at",
        ]
        extra_kwargs = {
            "failing_since": {"help_text": "Since when every try has failed; null when not."},
            "disabled_reason": {"help_text": "Why the controller disabled it, if it did."},
            "previous_secret_expires_at": {
                "help_text": "Until when the secret before the last rotation signs too."
            },
        }

    def validate_url(self, value: str) -> str:
        if not is_http_url(value):
            raise serializers.ValidationError("Enter an absolute http or https URL.")
        try:
            return services.check_url(value)
        except RefusedWebhookURL as exc:
            raise serializers.ValidationError(exc.detail) from None

    def validate_events(self, value: list[str]) -> list[str]:
        if ALL_EVENTS in value:
            return [ALL_EVENTS]
        return sorted(set(value), key=SUBSCRIBABLE.index)


class WebhookSecretSerializer(WebhookSerializer):
    """The answer of a creation or a rotation: the only time the secret is shown."""

    secret = serializers.CharField(
        read_only=True,
        help_text="The signing secret (whsec_ + base64), shown this once. Verify deliveries "
        "with it (standardwebhooks.Webhook(secret).verify(body, headers)).",
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = Delivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "state",
            "attempts",
            "next_attempt_at",
            "response_code",
            "created_at",
        ]
