from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.agents.services import issue_registration_token
from protocol.config_file import add_config_argument


class Command(BaseCommand):
    help = "Issue a one-time agent registration token and print it (it is not shown again)."

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument("--ttl", type=int, default=None, help="Lifetime in seconds.")

    def handle(self, *args, ttl: int | None, **options):
        if ttl is not None and not 60 <= ttl <= settings.REGISTRATION_TOKEN_MAX_TTL:
            raise CommandError(
                f"--ttl must be between 60 and {settings.REGISTRATION_TOKEN_MAX_TTL} seconds."
            )
        token, record = issue_registration_token(ttl=ttl)
        self.stderr.write(f"Expires at {record.expires_at.isoformat()}; shown only once.")
        self.stdout.write(token)
