"""The default scope's environment as tests set its rules."""

from apps.scopes.models import Environment
from apps.scopes.services import default_scope


def set_approvals(required: int) -> None:
    """How many approvers the default scope's changes need, as an operator would set it."""
    Environment.objects.filter(pk=default_scope().environment_id).update(
        approvals_required=required
    )


def set_default_rollout(plan: dict | None) -> None:
    Environment.objects.filter(pk=default_scope().environment_id).update(default_rollout=plan)
