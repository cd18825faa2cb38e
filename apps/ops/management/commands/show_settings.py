from django.conf import settings
from django.core.management.base import BaseCommand

from protocol.config_file import is_secret


def mask(name: str, value) -> str:
    if value is None:
        return "(unset)"
    if is_secret(name):
        return "********"
    if isinstance(value, list):
        return ", ".join(_mask_url(str(item)) for item in value)
    return _mask_url(str(value))


def _mask_url(text: str) -> str:
    # Passwords inside URLs (postgres://user:pass@host) are secrets too.
    if "://" in text and "@" in text:
        scheme, _, rest = text.partition("://")
        credentials, _, host = rest.rpartition("@")
        if ":" in credentials:
            text = f"{scheme}://{credentials.split(':', 1)[0]}:********@{host}"
    return text


class Command(BaseCommand):
    help = "Print the effective settings and where each came from (env, file or default)."

    def handle(self, *args, **options):
        path = settings.CONFIG_FILE.path
        self.stdout.write(f"settings file: {path or '(none)'} (role: {settings.CONFIG_FILE.role})")
        width = max(len(name) for name in settings.SETTING_SOURCES)
        for name in sorted(settings.SETTING_SOURCES):
            source, value = settings.SETTING_SOURCES[name]
            self.stdout.write(f"{name:<{width}}  {source:<7}  {mask(name, value)}")
