from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import User
from protocol.config_file import add_config_argument

SEED_EMAIL = "admin@distributed-system.com"
SEED_PASSWORD = "Admin123!@#"  # noqa: S105 - the seed design's documented default


class Command(BaseCommand):
    help = (
        "Create the default admin (staff superuser) if it does not exist yet. With DEBUG off, "
        "the seed's published password is refused and the password validators apply, unless "
        "--allow-default-password is given."
    )

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument("--email", default=settings.ADMIN_EMAIL)
        parser.add_argument("--password", default=settings.ADMIN_PASSWORD)
        parser.add_argument(
            "--allow-default-password",
            action="store_true",
            help="Accept the seed's default or a weak password even with DEBUG off.",
        )

    def handle(self, *args, email: str, password: str, allow_default_password: bool, **options):
        email = email.strip().lower()
        if User.objects.filter(email=email).exists():
            self.stdout.write(f"Admin {email} already exists; nothing changed.")
            return
        if not settings.DEBUG and not allow_default_password:
            self._refuse_weak(email, password)
        User.objects.create_superuser(email=email, password=password)
        self.stdout.write(self.style.SUCCESS(f"Created admin {email}."))
        if email == SEED_EMAIL or password == SEED_PASSWORD:
            self.stderr.write(
                self.style.WARNING(
                    "WARNING: this admin uses the published default credentials. "
                    "Change the password (Django admin or `manage.py changepassword`) "
                    "before exposing the controller."
                )
            )

    def _refuse_weak(self, email: str, password: str) -> None:
        if password == SEED_PASSWORD:
            raise CommandError(
                "ADMIN_PASSWORD is the seed's published default; with DEBUG off set your own "
                "(or pass --allow-default-password).",
                returncode=2,
            )
        try:
            validate_password(password, User(email=email))
        except ValidationError as exc:
            raise CommandError(
                f"ADMIN_PASSWORD is too weak: {' '.join(exc.messages)} (or pass "
                "--allow-default-password).",
                returncode=2,
            ) from None
