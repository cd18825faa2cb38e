"""Why a change request cannot be approved, rejected or cancelled, or a scheduled change cannot
be cancelled; answered by the API's exception handler and shown as messages in the admin."""

from rest_framework import status

from apps.accounts.roles import OPERATOR, SUPERUSER, role_needed_message
from controller_site.errors import NotFoundError, ServiceError


class UnknownChange(NotFoundError):
    def __init__(self, change_id) -> None:
        super().__init__(f"Change request {change_id} does not exist.")


class ChangeNotPending(ServiceError):
    """Decided already: published, rejected, cancelled or stale."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, change) -> None:
        super().__init__(f"Change request {change.pk} is {change.state}, not pending.")


class ChangeIsStale(ServiceError):
    """The version it was based on is no longer current; it must be proposed again."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, change, current_version: int) -> None:
        super().__init__(
            f"Change request {change.pk} is stale: it was based on version "
            f"{change.base_version} and the current version is {current_version}. "
            "Propose it again against the current version."
        )
        self.current_version = current_version

    def body(self) -> dict:
        return {"detail": self.detail, "current_version": self.current_version}


class NotYourDecision(ServiceError):
    """Approving or rejecting one's own request, or cancelling someone else's."""

    status_code = status.HTTP_403_FORBIDDEN


class AlreadyApproved(ServiceError):
    status_code = status.HTTP_409_CONFLICT

    def __init__(self, change) -> None:
        super().__init__(f"You have approved change request {change.pk} already.")


class EmergencyNeedsSuperuser(ServiceError):
    status_code = status.HTTP_403_FORBIDDEN

    def __init__(self) -> None:
        super().__init__(role_needed_message(SUPERUSER) + " An emergency publish skips approval.")

    def body(self) -> dict:
        return {"detail": self.detail, "required_role": SUPERUSER}


class UnknownScheduledChange(NotFoundError):
    def __init__(self, scheduled_id) -> None:
        super().__init__(f"Scheduled change {scheduled_id} does not exist.")


class ScheduledChangeDecided(ServiceError):
    """Published, stale, cancelled, expired or failed already: nothing left to cancel."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, scheduled) -> None:
        super().__init__(f"Scheduled change {scheduled.pk} is {scheduled.state}, not scheduled.")


class NotYourScheduledChange(ServiceError):
    """Cancelling someone else's scheduled change without being an operator of its scope."""

    status_code = status.HTTP_403_FORBIDDEN

    def __init__(self) -> None:
        super().__init__("Only its author or an operator of its scope cancels a scheduled change.")

    def body(self) -> dict:
        return {"detail": self.detail, "required_role": OPERATOR}
