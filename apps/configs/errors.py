"""The configs app's refusals; controller_site.errors turns them into HTTP answers."""

from django.conf import settings
from rest_framework import status

from controller_site.errors import NotFoundError, ServiceError


class NoConfigYet(NotFoundError):
    def __init__(self) -> None:
        super().__init__("No configuration has been created yet.")


class UnknownVersion(NotFoundError):
    def __init__(self, version: int) -> None:
        super().__init__(f"Configuration version {version} does not exist.")


class NoLiveAgent(ServiceError):
    status_code = status.HTTP_409_CONFLICT

    def __init__(self) -> None:
        super().__init__(
            "No agent is live (none has been in contact recently): nobody can run a pre-flight."
        )


class UnknownPreflight(NotFoundError):
    def __init__(self) -> None:
        super().__init__("No pre-flight with this id is waiting for this agent's answer.")


class BaseVersionGone(ServiceError):
    """A change based on a version that is no longer the newest."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, current_version: int) -> None:
        super().__init__(f"The current version is {current_version} now.")
        self.current_version = current_version


class StaleVersion(ServiceError):
    """An `If-Match` naming a version that is no longer the newest: someone changed it since."""

    status_code = status.HTTP_412_PRECONDITION_FAILED

    def __init__(self, current_version: int) -> None:
        super().__init__(
            f"The configuration changed since you read it: the current version is "
            f"{current_version}. Read it again and re-apply your change."
        )
        self.current_version = current_version

    def body(self) -> dict:
        return {"detail": self.detail, "current_version": self.current_version}


class PreflightFailed(ServiceError):
    """A publish whose plan asked for a pre-flight, and the pre-flight did not pass."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY

    def __init__(self, answer: dict) -> None:
        super().__init__(
            f"The pre-flight of {answer['config_url']} did not pass (a majority of the agents "
            f"asked must answer OK, and none fail); nothing was published."
        )
        self.answer = answer

    def body(self) -> dict:
        return {"detail": self.detail, "preflight": self.answer}


class PreflightRateLimited(ServiceError):
    """Past PREFLIGHT_RATE_PER_MINUTE: 429, with when to try again."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many pre-flights: at most {settings.PREFLIGHT_RATE_PER_MINUTE} a minute per "
            f"user. Try again in {retry_after} s."
        )
        self.retry_after = retry_after

    def headers(self) -> dict:
        return {"Retry-After": str(self.retry_after)}
