from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.agents.services import issue_registration_token
from apps.scopes.services import named_scope
from controller_site.errors import ServiceError
from protocol.config_file import add_config_argument
from protocol.labels import InvalidLabels, parse_label_pairs


class Command(BaseCommand):
    help = "Issue a one-time agent registration token and print it (it is not shown again)."

    def add_arguments(self, parser):
        add_config_argument(parser)
        parser.add_argument("--ttl", type=int, default=None, help="Lifetime in seconds.")
        parser.add_argument(
            "--label",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="A label the agent registering with the token gets (repeatable).",
        )
        parser.add_argument(
            "--application",
            default=None,
            help="The application of the agent's scope (default: DEFAULT_APPLICATION).",
        )
        parser.add_argument(
            "--environment",
            default=None,
            help="The environment of the agent's scope (default: DEFAULT_ENVIRONMENT).",
        )
        parser.add_argument(
            "--allow-agent-labels",
            action="store_true",
            help="Also take the agent's own labels, except for names --label binds.",
        )

    def handle(
        self,
        *args,
        ttl: int | None,
        label: list[str],
        allow_agent_labels: bool,
        application: str | None,
        environment: str | None,
        **options,
    ):
        if ttl is not None and not 60 <= ttl <= settings.REGISTRATION_TOKEN_MAX_TTL:
            raise CommandError(
                f"--ttl must be between 60 and {settings.REGISTRATION_TOKEN_MAX_TTL} seconds."
            )
        try:
            labels = parse_label_pairs(label)
        except InvalidLabels as exc:
            raise CommandError(f"--label: {exc}") from None
        try:
            scope = named_scope(application, environment)
        except ServiceError as exc:
            raise CommandError(str(exc.detail)) from None
        token, record = issue_registration_token(
            scope_id=scope.pk, ttl=ttl, labels=labels, allow_agent_labels=allow_agent_labels
        )
        self.stderr.write(
            f"For {scope}; expires at {record.expires_at.isoformat()}; shown only once."
        )
        self.stdout.write(token)
