import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controller_site.settings")
django.setup(set_prefix=False)

from controller_site.request_threads import SyncChainASGIHandler  # noqa: E402

django_application = SyncChainASGIHandler()

# Imported after Django is set up: the watch endpoint uses models and settings.
from django.conf import settings  # noqa: E402

from apps.configs.front import WatchEndpoint  # noqa: E402
from controller_site.body_limit import BodyLimit  # noqa: E402
from controller_site.secrets_check import refuse_weak_secrets  # noqa: E402

# Served some other way than run_controller (uvicorn directly, say), the key is checked here.
refuse_weak_secrets("SECRET_KEY")

# GET /config/version is served in front of Django (see apps/configs/front.py); the rest of the
# API, the admin and the docs are Django's. Every request body is capped before either.
application = BodyLimit(WatchEndpoint(django_application), settings.CONTROLLER_MAX_BODY_BYTES)
