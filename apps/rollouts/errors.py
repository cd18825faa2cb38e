"""Why a rollout cannot do what was asked; answered by the API's exception handler."""

from rest_framework import status

from apps.rollouts.models import Rollout
from controller_site.errors import NotFoundError, ServiceError


class RolloutConflict(ServiceError):
    """The rollout's state does not allow what was asked (409)."""

    status_code = status.HTTP_409_CONFLICT


class RolloutInProgress(RolloutConflict):
    def __init__(self, rollout: Rollout) -> None:
        super().__init__(
            f"The rollout of version {rollout.version} is {rollout.state} (wave {rollout.wave} "
            f"of {rollout.last_wave}): promote it to the end, or abort it, before publishing "
            f"again. POST /config/admin/rollback always goes through."
        )
        self.rollout = rollout


class NoRollout(NotFoundError):
    def __init__(self) -> None:
        super().__init__("No rollout has been started yet.")


class NothingToRollOutFrom(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "A rollout needs a current version to roll out from; publish the first version "
            "without one."
        )


class RolloutPlanNeedsDirectPublish(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "A rollout plan goes with a direct publish; while approvals are required (or for an "
            "emergency) a change goes to every agent at once when published."
        )
