"""Why a webhook endpoint cannot be saved or found; answered by the API's exception handler."""

from controller_site.errors import NotFoundError, ServiceError


class UnknownWebhook(NotFoundError):
    def __init__(self, pk) -> None:
        super().__init__(f"Webhook {pk} does not exist.")


class RefusedWebhookURL(ServiceError):
    """The URL leads to a private address while WEBHOOKS_BLOCK_PRIVATE_URLS is on."""

    def body(self) -> dict:
        return {"url": [self.detail]}
