from django.conf import settings
from django.core.management.base import BaseCommand

from apps.accounts.models import User
from protocol.config_file import add_config_argument

SEED_EMAIL = "admin@distributed-system.com"
SEED_PASSWORD = "Admin123!@#"  # noqa: S105 - the seed design's documented default


class Command(BaseCommand):
    help = "Create the default admin (staff superuser) if it does not exist yet."

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument("--email", default=settings.ADMIN_EMAIL)
        parser.add_argument("--password", default=settings.ADMIN_PASSWORD)

    def handle(self, *args, email: str, password: str, **options):
        email = email.strip().lower()
        if User.objects.filter(email=email).exists():
            self.stdout.write(f"Admin {email} already exists; nothing changed.")
            return
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
