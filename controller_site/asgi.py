import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controller_site.settings")

django_application = get_asgi_application()

# Served some other way than run_controller (uvicorn directly, say), the key is checked here.
from controller_site.secrets_check import refuse_weak_secrets  # noqa: E402

refuse_weak_secrets("SECRET_KEY")

# Imported after Django is set up: the watch endpoint uses models and settings.
from apps.configs.watch import WatchEndpoint  # noqa: E402

# GET /config/version is served in front of Django (see apps/configs/watch.py); the rest of the
# API, the admin and the docs are Django's.
application = WatchEndpoint(django_application)
