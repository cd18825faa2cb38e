"""GET/POST /webhooks, GET/PATCH/DELETE /webhooks/{id}, POST /webhooks/{id}/rotate-secret and
POST /webhooks/{id}/test: an operator's (or a superuser's), since an endpoint receives news of
every scope it asks for. The secret is answered on creation and rotation only."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import forbidden
from apps.accounts.roles import OPERATOR
from apps.webhooks import services
from apps.webhooks.models import WebhookEndpoint
from apps.webhooks.serializers import (
    DeliverySerializer,
    WebhookSecretSerializer,
    WebhookSerializer,
)
from controller_site.request_info import client_ip

OPERATOR_ONLY = {method: OPERATOR for method in ("GET", "POST", "PATCH", "DELETE")}
UNKNOWN = OpenApiResponse(description="No such webhook.")
INVALID = OpenApiResponse(
    description="A field is invalid: an unknown event, application or environment, or a URL "
    "that is not http(s) or leads to a private address while WEBHOOKS_BLOCK_PRIVATE_URLS is on; "
    "nothing was stored."
)


def _with_secret(endpoint: WebhookEndpoint, secret: str, status_code: int) -> Response:
    endpoint.secret = secret
    return Response(WebhookSecretSerializer(endpoint).data, status=status_code)


@extend_schema_view(
    get=extend_schema(
        tags=["webhooks"],
        summary="Webhook endpoints",
        responses={200: WebhookSerializer(many=True), 403: forbidden(OPERATOR)},
    ),
    post=extend_schema(
        tags=["webhooks"],
        summary="Add a webhook endpoint",
        description="The answer carries the endpoint's signing secret, shown this once. Audited.",
        request=WebhookSerializer,
        responses={201: WebhookSecretSerializer, 400: INVALID, 403: forbidden(OPERATOR)},
    ),
)
class WebhookListView(generics.ListAPIView):
    serializer_class = WebhookSerializer
    queryset = WebhookEndpoint.objects.order_by("id")
    role_rules = OPERATOR_ONLY

    def post(self, request):
        body = WebhookSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint, secret = services.create_endpoint(
            actor=request.user, source_ip=client_ip(request), **body.validated_data
        )
        return _with_secret(endpoint, secret, status.HTTP_201_CREATED)


class WebhookView(APIView):
    role_rules = OPERATOR_ONLY

    @extend_schema(
        tags=["webhooks"],
        summary="A webhook endpoint",
        responses={200: WebhookSerializer, 403: forbidden(OPERATOR), 404: UNKNOWN},
    )
    def get(self, request, webhook_id: int):
        return Response(WebhookSerializer(services.get_endpoint(webhook_id)).data)

    @extend_schema(
        tags=["webhooks"],
        summary="Change a webhook endpoint",
        description="Any subset of the fields. Enabling an endpoint the controller disabled "
        "starts its deliveries again. Audited.",
        request=WebhookSerializer(partial=True),
        responses={200: WebhookSerializer, 400: INVALID, 403: forbidden(OPERATOR), 404: UNKNOWN},
    )
    def patch(self, request, webhook_id: int):
        endpoint = services.get_endpoint(webhook_id)
        body = WebhookSerializer(endpoint, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        endpoint = services.change_endpoint(
            endpoint, actor=request.user, source_ip=client_ip(request), **body.validated_data
        )
        return Response(WebhookSerializer(endpoint).data)

    @extend_schema(
        tags=["webhooks"],
        summary="Delete a webhook endpoint",
        description="With its deliveries, sent or not. Audited.",
        responses={204: None, 403: forbidden(OPERATOR), 404: UNKNOWN},
    )
    def delete(self, request, webhook_id: int):
        services.delete_endpoint(
            services.get_endpoint(webhook_id), actor=request.user, source_ip=client_ip(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretView(APIView):
    role_rules = OPERATOR_ONLY

    @extend_schema(
        tags=["webhooks"],
        summary="Give a webhook endpoint a new signing secret",
        description="The answer carries the new secret, shown this once. The old one keeps "
        "signing beside it for 24 hours (webhook-signature then holds both), so receivers can "
        "switch without missing a delivery. Audited.",
        request=None,
        responses={200: WebhookSecretSerializer, 403: forbidden(OPERATOR), 404: UNKNOWN},
    )
    def post(self, request, webhook_id: int):
        endpoint, secret = services.rotate_secret(
            services.get_endpoint(webhook_id), actor=request.user, source_ip=client_ip(request)
        )
        return _with_secret(endpoint, secret, status.HTTP_200_OK)


class WebhookTestView(APIView):
    role_rules = OPERATOR_ONLY

    @extend_schema(
        tags=["webhooks"],
        summary="Send a test event to a webhook endpoint",
        description="A `webhook.test` event, to this endpoint only, whatever events it asks "
        "for; it is delivered (and retried) like any other.",
        request=None,
        responses={202: DeliverySerializer, 403: forbidden(OPERATOR), 404: UNKNOWN},
    )
    def post(self, request, webhook_id: int):
        delivery = services.send_test_event(services.get_endpoint(webhook_id), actor=request.user)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
