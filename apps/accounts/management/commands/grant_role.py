from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.models import User
from apps.accounts.roles import ROLES, roles_of
from apps.accounts.services import grant_role


class Command(BaseCommand):
    help = (
        "Give a user a role (viewer, editor, approver, operator), or take every role away with "
        "`none`. --create makes the user first when it does not exist."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("role", choices=[*ROLES, "none"])
        parser.add_argument(
            "--create", action="store_true", help="Create the user when it does not exist."
        )
        parser.add_argument("--password", help="The new user's password (with --create).")

    def handle(self, *args, email: str, role: str, create: bool, password: str | None, **options):
        email = email.strip().lower()
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
            grant_role(user, role)
        held = roles_of(user)
        self.stdout.write(
            self.style.SUCCESS(f"{email}: {', '.join(held) if held else 'no role'}")
            + (" (superuser: may do everything)" if user.is_superuser else "")
        )
