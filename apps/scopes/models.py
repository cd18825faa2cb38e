from django.core.validators import RegexValidator
from django.db import models

from protocol.rules import SCOPE_NAME_PATTERN, SCOPE_NAME_RULE

name_validator = RegexValidator(SCOPE_NAME_PATTERN, f"Use {SCOPE_NAME_RULE}.")


class Application(models.Model):
    """A named fleet of workers (payments, search), deployed in every environment."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "application"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Environment(models.Model):
    """A stage every application goes through (dev < staging < production), with the rules its
    changes obey there."""

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    # The environments' order on a page and in a promotion: lower first.
    order = models.IntegerField(default=0)
    # How many approvers must say yes to an editor's change here; 0 publishes at once.
    approvals_required = models.PositiveSmallIntegerField(default=0)
    # The rollout plan of a change here that names none (the body of POST .../rollout), so that
    # "production always goes canary first" is a rule and not a habit; null: at once.
    default_rollout = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "environment"
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name


class Scope(models.Model):
    """One application in one environment: it has its own versions, agents, rollouts and
    change requests, and a change in it touches no other."""

    application = models.ForeignKey(Application, on_delete=models.PROTECT, related_name="scopes")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="scopes")

    class Meta:
        db_table = "scope"
        ordering = ["application__name", "environment__order", "environment__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "environment"], name="one_scope_per_application_env"
            )
        ]

    def __str__(self) -> str:
        return f"{self.application.name}/{self.environment.name}"
