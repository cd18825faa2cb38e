from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from agent.settings import read_settings as read_agent_settings
from protocol.config_file import add_config_argument, is_secret, mask_url
from protocol.settings import SettingsError, read_role_settings
from worker.settings import read_settings as read_worker_settings

# The worker and the agent read their own settings, without Django.
DAEMON_READERS = {"worker": read_worker_settings, "agent": read_agent_settings}


def mask(name: str, value) -> str:
    if value is None:
        return "(unset)"
    if is_secret(name):
        return "********"
    if isinstance(value, list):
        return ", ".join(mask_url(str(item)) for item in value)
    return mask_url(str(value))


class Command(BaseCommand):
    help = "Print the effective settings and where each came from (env, file or default)."

    def add_arguments(self, parser):
        add_config_argument(parser)

    def handle(self, *args, **options):
        path, role = settings.CONFIG_FILE.path, settings.CONFIG_FILE.role
        sources = settings.SETTING_SOURCES
        if role in DAEMON_READERS:
            sources = daemon_sources(path, role)
        self.stdout.write(f"settings file: {path or '(none)'} (role: {role})")
        width = max(len(name) for name in sources)
        for name in sorted(sources):
            source, value = sources[name]
            self.stdout.write(f"{name:<{width}}  {source:<7}  {mask(name, value)}")


def daemon_sources(path: str | None, role: str) -> dict[str, tuple[str, object]]:
    """The worker's or the agent's settings as that process reads them, and their sources. A
    bad settings file stops the command as it stops that process (manage.py: `error: ...`)."""
    try:
        return read_role_settings(role, DAEMON_READERS[role], path)[1]
    except SettingsError as exc:
        raise CommandError(str(exc), returncode=2) from None
