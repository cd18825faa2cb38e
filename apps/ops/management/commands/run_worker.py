"""run_worker reached through Django (`django-admin`, `call_command`). `manage.py run_worker`
runs worker.command before Django loads; both take the same flags and do the same."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from worker.command import HELP, add_arguments, run


class Command(BaseCommand):
    help = HELP
    # The worker uses none of the controller's models or database.
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        status = run(options, settings.CONFIG_FILE.path)
        if status:
            raise CommandError("run_worker stopped; see the error above.", returncode=status)
