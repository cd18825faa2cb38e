from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import User
from apps.accounts.roles import ROLES, roles_of
from apps.accounts.services import (
    grant_role,
    grant_scoped_role,
    scoped_grants,
    take_scoped_roles,
)
from apps.scopes.services import get_application, get_environment
from controller_site.errors import NotFoundError


class Command(BaseCommand):
    help = (
        "Give a user a role (viewer, editor, approver, operator), or take every role away with "
        "`none`: everywhere, or with --application and/or --environment in that part of the "
        "fleet only. --create makes the user first when it does not exist."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("role", choices=[*ROLES, "none"])
        parser.add_argument(
            "--create", action="store_true", help="Create the user when it does not exist."
        )
        parser.add_argument("--password", help="The new user's password (with --create).")
        parser.add_argument(
            "--application", help="Only in this application (every environment of it)."
        )
        parser.add_argument(
            "--environment", help="Only in this environment (of every application)."
        )

    def handle(self, *args, email: str, role: str, create: bool, password: str | None, **options):
        email = email.strip().lower()
        application, environment = _scope_of(options["application"], options["environment"])
        if password is not None and not create:
            raise CommandError("--password is only used with --create.")
        with transaction.atomic():
            user = User.objects.filter(email=email).first()
            if user is None:
                if not create:
                    raise CommandError(f"No user {email}; add --create --password P to make one.")
                if not password:
                    raise CommandError("--create needs --password.")
                try:
                    validate_password(password, User(email=email))
                except ValidationError as exc:
                    raise CommandError(" ".join(exc.messages)) from None
                user = User.objects.create_user(email=email, password=password)
                self.stdout.write(f"Created user {email}.")
            elif password is not None:
                self.stdout.write(f"User {email} exists; its password is unchanged.")
            if application is None and environment is None:
                grant_role(user, role)
            elif role == "none":
                take_scoped_roles(user, application=application, environment=environment)
            else:
                grant_scoped_role(user, role, application=application, environment=environment)
        held = roles_of(user)
        grants = [
            f"{grant['role']} in {grant['application'] or '*'}/{grant['environment'] or '*'}"
            for grant in scoped_grants(user)
        ]
        self.stdout.write(
            self.style.SUCCESS(f"{email}: {', '.join(held) if held else 'no role'}")
            + (f"; {', '.join(grants)}" if grants else "")
            + (" (superuser: may do everything)" if user.is_superuser else "")
        )


def _scope_of(application: str | None, environment: str | None):
    """The Application and Environment rows named (None where not named)."""
    try:
        return (
            None if application is None else get_application(application),
            None if environment is None else get_environment(environment),
        )
    except NotFoundError as exc:
        raise CommandError(exc.detail) from None
