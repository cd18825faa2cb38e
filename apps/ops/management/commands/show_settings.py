from django.conf import settings
from django.core.management.base import BaseCommand

from controller_site.config_file import is_secret, mask_url


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

    def handle(self, *args, **options):
        path = settings.CONFIG_FILE.path
        self.stdout.write(f"settings file: {path or '(none)'} (role: {settings.CONFIG_FILE.role})")
        width = max(len(name) for name in settings.SETTING_SOURCES)
        for name in sorted(settings.SETTING_SOURCES):
            source, value = settings.SETTING_SOURCES[name]
            self.stdout.write(f"{name:<{width}}  {source:<7}  {mask(name, value)}")
