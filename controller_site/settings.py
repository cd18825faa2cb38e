"""Settings for the controller and the commands that run the agent and worker.

Everything is read from the environment here and nowhere else. Unset variables fall back to the
embedded defaults: SQLite under var/ and local-memory cache, so a first run needs no services.
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controller_site.var_dir import development_secret_key, make_var_dir
from protocol import config_file
from protocol.logs import logging_config, read_log_settings, server_logging_config
from protocol.rules import SCOPE_NAME_RULE, is_scope_name
from protocol.settings import SettingsReader

BASE_DIR = Path(__file__).resolve().parent.parent


CONFIG_FILE = config_file.current()
_settings = SettingsReader(CONFIG_FILE, error=ImproperlyConfigured)
# Where each setting came from, for `manage.py show_settings`: name -> (source, value).
SETTING_SOURCES = _settings.sources
env_str = _settings.str
env_bool = _settings.bool
env_int = _settings.int
env_float = _settings.float
env_list = _settings.list
_record = _settings.record


# Local state (the development database and keys, the agent's state): VAR_DIR, or var_dir in a
# settings file.
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set SECRET_KEY to a long random string "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DEBUG=1 for local development."
        )
    SECRET_KEY = _record("SECRET_KEY", "var", development_secret_key(VAR_DIR))

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # The stock admin, with the operator's dashboard as its index page.
    "controller_site.apps.ControllerAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.accounts",
    "apps.scopes",
    "apps.configs",
    "apps.agents",
    "apps.ops",
    "apps.audit",
    "apps.changes",
    "apps.rollouts",
    "apps.webhooks",
]

MIDDLEWARE = [
    # First, so that it times and counts every answer, redirects and static files included.
    "apps.ops.metrics.request_metrics_middleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controller_site.urls"
WSGI_APPLICATION = "controller_site.wsgi.application"
ASGI_APPLICATION = "controller_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: PostgreSQL (psycopg 3) from DATABASE_URL, SQLite under var/ otherwise.
DATABASE_URL = env_str("DATABASE_URL", kind="url")
DB_POOL_SIZE = env_int("DB_POOL_SIZE", 10, minimum=0)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", 5)
        # Under ASGI every request may run on a different thread, and persistent per-thread
        # connections pile up until PostgreSQL refuses more; a pool per process bounds them.
        # A connection broken by a database restart is found and replaced on checkout, not
        # handed to a request that would then fail.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        if DB_POOL_SIZE:
            options["pool"] = {
                "min_size": 1,
                "max_size": DB_POOL_SIZE,
                "timeout": 5,
                # The pool retries a lost connection with doubling delays; giving up after 10 s
                # lets the next request start afresh, so a database that is back is used within
                # seconds instead of after the next long delay.
                "reconnect_timeout": 10,
            }
        else:
            DATABASES["default"]["CONN_MAX_AGE"] = 60
else:
    make_var_dir(VAR_DIR)
    DATABASES = {
        "default": {
            # Django's SQLite backend, creating the file 0600 (see controller_site/sqlite).
            "ENGINE": "controller_site.sqlite",
            "NAME": VAR_DIR / "controller.sqlite3",
            # IMMEDIATE takes the write lock when a transaction starts, so concurrent config
            # changes queue instead of failing with "database is locked" halfway through.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
            # Tests use a file too, not Django's shared in-memory database: its table locks
            # ignore the busy timeout, so concurrent writers there fail ("database table is
            # locked") where the real file makes them wait their turn.
            "TEST": {"NAME": str(VAR_DIR / "test-controller.sqlite3")},
        }
    }

# Cache: Redis when REDIS_URL is set. A Redis outage turns cache calls into misses (logged), so
# every reader falls back to the database instead of failing the request.
# The Redis settings are read with or without REDIS_URL, so that a settings file may hold them
# before Redis is turned on instead of failing as unknown keys.
REDIS_URL = env_str("REDIS_URL", kind="url")
CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "dcs")
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 0.5)
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5)
NOTIFY_CHANNEL = env_str("NOTIFY_CHANNEL")
# Redis Sentinel: the sentinels tell where the master is, before and after a failover. REDIS_URL
# then names the master the sentinels monitor instead of a host (redis://[:PASSWORD@]MASTER/DB),
# which is how django-redis reads it, and keeps the password and database number.
REDIS_SENTINELS = env_list("REDIS_SENTINELS", [])
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER")
REDIS_SENTINEL_ADDRESSES: list[tuple[str, int]] = []
if REDIS_SENTINELS:
    if not REDIS_SENTINEL_MASTER:
        raise ImproperlyConfigured(
            "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER, the name of the master the sentinels "
            "monitor (`sentinel monitor NAME ...`)."
        )
    for _address in REDIS_SENTINELS:
        _host, _, _port = _address.rpartition(":")
        if not _host or not _port.isdigit():
            raise ImproperlyConfigured(f"REDIS_SENTINELS: {_address!r} is not HOST:PORT.")
        REDIS_SENTINEL_ADDRESSES.append((_host.strip("[]"), int(_port)))
    if REDIS_URL is None:
        REDIS_URL = _record("REDIS_URL", "default", f"redis://{REDIS_SENTINEL_MASTER}/0")
    elif (urlsplit(REDIS_URL).hostname or "") != REDIS_SENTINEL_MASTER.lower():
        raise ImproperlyConfigured(
            "With REDIS_SENTINELS, the host of REDIS_URL is the master's name: "
            f"redis://[:PASSWORD@]{REDIS_SENTINEL_MASTER}/DB, or leave REDIS_URL unset."
        )
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            # Values are sealed JSON (apps/ops/sealed.py), never pickles. Version 2 of the keys:
            # a controller of an older release reads and writes pickles under version 1, and
            # neither reads the other's values while both run during an upgrade.
            "VERSION": 2,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SERIALIZER": "apps.ops.sealed.SealedJSONSerializer",
                "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT,
                "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    if REDIS_SENTINELS:
        # Reads and writes both go to the master (a list of one location: the client would
        # otherwise read from replicas, which may lag a write or a failover behind).
        CACHES["default"]["LOCATION"] = [REDIS_URL]
        CACHES["default"]["OPTIONS"].update(
            CLIENT_CLASS="django_redis.client.SentinelClient",
            CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
            SENTINELS=REDIS_SENTINEL_ADDRESSES,
            SENTINEL_KWARGS={
                "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                "socket_timeout": REDIS_SOCKET_TIMEOUT,
            },
        )
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    # Pub/sub channels are shared by all Redis databases: name the database in the channel so
    # that two deployments on one Redis do not wake each other's agents.
    if NOTIFY_CHANNEL is None:
        _redis_db = urlsplit(REDIS_URL).path.strip("/") or "0"
        NOTIFY_CHANNEL = _record(
            "NOTIFY_CHANNEL", "default", f"{CACHE_KEY_PREFIX}:{_redis_db}:config-changes"
        )
    DJANGO_REDIS_LOGGER = "apps.cache"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    NOTIFY_CHANNEL = None

AUTH_USER_MODEL = "accounts.User"
# Django's permissions (what the admin checks) follow from the roles, not from per-group rows;
# passwords are checked behind the login throttle (apps/accounts/backends.py).
AUTHENTICATION_BACKENDS = ["apps.accounts.backends.ThrottledRoleBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# Hashed, compressed names once `collectstatic` has run (the Docker image runs it at build with
# STATICFILES_MANIFEST=1); before that, whitenoise serves the files straight from the apps.
STATICFILES_MANIFEST = env_bool("STATICFILES_MANIFEST", (STATIC_ROOT / "staticfiles.json").exists())
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if STATICFILES_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Without collectstatic (tests, `make run`), whitenoise serves straight from the app folders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_MANIFEST_STRICT = False

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# X-Forwarded-For is believed only from the proxies in FORWARDED_ALLOW_IPS (the server puts the
# client's address in REMOTE_ADDR). Counting hops in the header (NUM_PROXIES) believed any peer,
# so a client that reached the controller around its proxy chose the address the login
# throttle and the audit log saw: it is refused rather than silently ignored.
if os.environ.get("NUM_PROXIES", "0").strip() not in ("", "0"):
    raise ImproperlyConfigured(
        "NUM_PROXIES is no longer supported: it believed X-Forwarded-For from any peer. Remove "
        "it and list your proxies' addresses or networks in FORWARDED_ALLOW_IPS instead."
    )

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.auth.ApiTokenAuthentication",
        "apps.accounts.auth.AdminJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Each view names the role each method needs (apps.accounts.roles).
    "DEFAULT_PERMISSION_CLASSES": ["apps.accounts.permissions.HasRole"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["controller_site.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "controller_site.schema.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "controller_site.errors.exception_handler",
    # DRF's own client address (its throttles): REMOTE_ADDR, never X-Forwarded-For.
    "NUM_PROXIES": 0,
    "UNAUTHENTICATED_USER": None,
}


def _rate(name: str, default: str) -> tuple[int, int]:
    """A rate such as 10/min as (count, window in seconds)."""
    text = env_str(name, default)
    count, _, period = text.partition("/")
    seconds = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600, "d": 86400}
    if not count.strip().isdigit() or int(count) < 1 or period.strip() not in seconds:
        raise ImproperlyConfigured(f"{name} must look like 10/min (per s, min, h or d): {text!r}")
    return int(count), seconds[period.strip()]


# Failed logins (API and admin alike) allowed per window, counted per client address and per
# account; past that, every attempt (the right password too) gets 429 until the window ends.
LOGIN_FAILURE_LIMIT, LOGIN_FAILURE_WINDOW = _rate("LOGIN_FAILURE_RATE", "10/min")

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("JWT_ACCESS_MINUTES", 15, minimum=1)),
    "REFRESH_TOKEN_LIFETIME": timedelta(hours=env_int("JWT_REFRESH_HOURS", 24, minimum=1)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
    "SIGNING_KEY": SECRET_KEY,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Distributed Configuration Controller API",
    "DESCRIPTION": (
        "One versioned configuration that admins edit and agents watch. Admin endpoints take a "
        "JWT from POST /login; agent endpoints take the agent token from POST /agent/register."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Rollouts and change requests both have a `state`: each its own enum in the schema.
    "ENUM_NAME_OVERRIDES": {
        "RolloutStateEnum": "apps.rollouts.models.STATES",
        "ChangeRequestStateEnum": "apps.changes.models.ChangeRequest.STATES",
        "RoleEnum": "apps.accounts.roles.ROLES",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controller_site.schema.document_invalid_page",
        "controller_site.schema.document_plain_views",
        "controller_site.schema.document_body_limit",
    ],
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "registrationToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A one-time token from GET /agent/admin.",
            }
        }
    },
}

# Change requests: how many approvers must say yes before an editor's change is published, in
# an environment made without saying (each environment has its own, apps.scopes); the default
# environment takes it when it is made. 0 (the default): editors publish directly.
CONFIG_APPROVALS_REQUIRED = env_int("CONFIG_APPROVALS_REQUIRED", 0, minimum=0)

# The scope the seed's routes (/config/admin, /agents, ...) act on, and where the data of a
# controller from before applications and environments went on its upgrade.
DEFAULT_APPLICATION = env_str("DEFAULT_APPLICATION", "default")
DEFAULT_ENVIRONMENT = env_str("DEFAULT_ENVIRONMENT", "production")
for _name, _value in (
    ("DEFAULT_APPLICATION", DEFAULT_APPLICATION),
    ("DEFAULT_ENVIRONMENT", DEFAULT_ENVIRONMENT),
):
    if not is_scope_name(_value):
        raise ImproperlyConfigured(f"{_name} must be {SCOPE_NAME_RULE}: {_value!r}")

# Pre-flights each user may ask for a minute (each has up to 20 agents' workers fetch a URL);
# beyond it, 429 with Retry-After. 0: no limit.
PREFLIGHT_RATE_PER_MINUTE = env_int("PREFLIGHT_RATE_PER_MINUTE", 10, minimum=0)

# Registration tokens and agents.
REGISTRATION_TOKEN_TTL = env_int("REGISTRATION_TOKEN_TTL", 3600, minimum=1)
REGISTRATION_TOKEN_MAX_TTL = 7 * 24 * 3600
# The periodic jobs (apps/ops/jobs.py) run in every controller process unless this is off, for
# a deployment that runs them apart (`manage.py run_jobs`). How often each checks whether a
# rolling rollout can start its next wave, and whether a scheduled change's time has come.
CONTROLLER_RUN_JOBS = env_bool("CONTROLLER_RUN_JOBS", True)
ROLLOUT_TICK_SECONDS = env_float("ROLLOUT_TICK_SECONDS", 1.0, positive=True)
SCHEDULED_TICK_SECONDS = env_float("SCHEDULED_TICK_SECONDS", 0.5, positive=True)
# Webhooks (apps/webhooks): private, loopback and link-local endpoints are refused as the worker's
# upstreams are (`make run` allows them); the delivery job's period (a commit wakes it at once),
# and how many endpoints one process sends to at a time.
WEBHOOKS_BLOCK_PRIVATE_URLS = env_bool("WEBHOOKS_BLOCK_PRIVATE_URLS", True)
WEBHOOKS_TICK_SECONDS = env_float("WEBHOOKS_TICK_SECONDS", 1.0, positive=True)
WEBHOOKS_DELIVERY_THREADS = env_int("WEBHOOKS_DELIVERY_THREADS", 4, minimum=1)
# How long a process trusts its own memory of an agent token before asking the database again:
# this bounds how long a revoked token keeps working.
AGENT_AUTH_CACHE_SECONDS = env_float("AGENT_AUTH_CACHE_SECONDS", 1.0)
# last_seen is written at most this often per agent, so polling does not write on every call.
AGENT_LAST_SEEN_WRITE_SECONDS = env_int("AGENT_LAST_SEEN_WRITE_SECONDS", 30, minimum=0)
# Heartbeats taken by the ASGI front are written in batches: one statement every this many
# seconds, or sooner when this many reports are waiting. A crash loses at most one window.
HEARTBEAT_FLUSH_SECONDS = env_float("HEARTBEAT_FLUSH_SECONDS", 0.1)
HEARTBEAT_BATCH_SIZE = env_int("HEARTBEAT_BATCH_SIZE", 500, minimum=1)

# run_controller: gunicorn with uvicorn workers. Without Redis, each extra process finds changes
# made by another only through its once-a-second database re-check, so one is the default there.
CONTROLLER_BIND = env_str("CONTROLLER_BIND", "127.0.0.1:8080")
CONTROLLER_WORKERS = env_int("CONTROLLER_WORKERS", 2 if REDIS_URL else 1, minimum=1)
CONTROLLER_TIMEOUT = env_int("CONTROLLER_TIMEOUT", 30, minimum=1)
CONTROLLER_GRACEFUL_TIMEOUT = env_int("CONTROLLER_GRACEFUL_TIMEOUT", 15, minimum=1)
CONTROLLER_KEEPALIVE = env_int("CONTROLLER_KEEPALIVE", 75, minimum=1)
CONTROLLER_ACCESS_LOG = env_bool("CONTROLLER_ACCESS_LOG", True)
FORWARDED_ALLOW_IPS = env_str("FORWARDED_ALLOW_IPS", "127.0.0.1")
# A connection that has not sent a whole request head this many seconds after it opened (or
# after the first byte of a later request on it) is closed: half-sent heads hold no sockets.
CONTROLLER_HEADER_TIMEOUT = env_float("CONTROLLER_HEADER_TIMEOUT", 10.0, positive=True)
# Watches and event streams held at once. Per agent token, in each process: a newer one ends the
# agent's oldest (0: no cap, for benchmarks that share one token among many clients). Per
# process: past it a new one is refused with 503; a 20,000-agent fleet on two processes holds
# about 10,000 each, and a held watch costs some 20 KiB, so the default stays clear of both.
CONTROLLER_MAX_WATCHES_PER_AGENT = env_int("CONTROLLER_MAX_WATCHES_PER_AGENT", 4, minimum=0)
CONTROLLER_MAX_WATCHES = env_int("CONTROLLER_MAX_WATCHES", 30000, minimum=0)
# A request body over this many bytes gets 413 before the application reads it (1 MiB: a
# config change or a heartbeat is well under a kilobyte).
CONTROLLER_MAX_BODY_BYTES = env_int("CONTROLLER_MAX_BODY_BYTES", 1024 * 1024, minimum=1)

# seed_admin defaults: the seed design's admin.
ADMIN_EMAIL = env_str("ADMIN_EMAIL", "admin@distributed-system.com")
ADMIN_PASSWORD = env_str("ADMIN_PASSWORD", "Admin123!@#")

# Logging ---------------------------------------------------------------------------------------
# One line per event on stderr; LOG_FORMAT=json writes JSON objects instead of text. The HTTP
# servers' loggers (gunicorn's and uvicorn's for the controller, granian's for the worker) get the
# same handler (SERVER_LOGGING), so access lines follow suit.
LOG_LEVEL, LOG_FORMAT = read_log_settings(_settings)
LOGGING = logging_config(LOG_LEVEL, LOG_FORMAT)
LOGGING["loggers"]["django"] = {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
# The access handler is handed to uvicorn's access logger too, so its filter applies to both.
SERVER_LOGGING = server_logging_config(LOGGING)
SERVER_LOGGING["loggers"] = {
    **LOGGING["loggers"],
    "gunicorn.error": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
    "gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
}

# Production security ---------------------------------------------------------------------------
# All off by default (a laptop speaks plain HTTP); turn them on behind TLS. `manage.py check
# --deploy` is clean with the values that docs/settings.md, "Production settings", lists.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Probes and Prometheus talk plain HTTP to the container itself, never through the TLS proxy.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Opt-in: trust X-Forwarded-Proto only when a proxy that always sets it stands in front.
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
# Outbound calls must give up before gunicorn gives up on the request: a query may run at most
# DATABASE_STATEMENT_TIMEOUT seconds, and connecting to PostgreSQL or Redis takes even less.
DATABASE_STATEMENT_TIMEOUT = env_int("DATABASE_STATEMENT_TIMEOUT", 10, minimum=1)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"].setdefault(
        "options", f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT * 1000}"
    )
# Behind a pooler in transaction mode (pgbouncer), every transaction may run on a different
# server connection and a stock pgbouncer refuses the start-up `options` above. So the timeout
# is then stored as this role's default in this database (ALTER ROLE ... SET, written by
# `migrate`), which PostgreSQL applies to every server connection the pooler opens; and nothing
# may outlive a transaction: no server-side cursors, no prepared statements.
DATABASE_TRANSACTION_POOLING = env_bool("DATABASE_TRANSACTION_POOLING", False)
if DATABASE_TRANSACTION_POOLING and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    DATABASES["default"]["OPTIONS"].pop("options", None)
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
if DATABASE_STATEMENT_TIMEOUT >= CONTROLLER_TIMEOUT:
    raise ImproperlyConfigured(
        f"DATABASE_STATEMENT_TIMEOUT ({DATABASE_STATEMENT_TIMEOUT} s) must be below "
        f"CONTROLLER_TIMEOUT ({CONTROLLER_TIMEOUT} s)."
    )

# Metrics ---------------------------------------------------------------------------------------
# GET /metrics on the controller. run_controller points prometheus_client's multiprocess mode at
# a fresh directory of its own, so every gunicorn worker process counts into one exposition.
# An agent is counted as stale when it has not been heard from for this many seconds.
METRICS_AGENT_STALE_SECONDS = env_int("METRICS_AGENT_STALE_SECONDS", 300, minimum=1)
# The worker and the agent read their own settings (worker/settings.py, agent/settings.py),
# without Django: none of the above is theirs.

# Last: a settings-file key that no setting above read is a mistake, not something to ignore.
if CONFIG_FILE.role == "controller":
    CONFIG_FILE.check_unknown(set(SETTING_SOURCES))
