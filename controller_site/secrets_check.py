"""Secrets that must not reach production: too short, or published in this repository.

With DEBUG off, each process refuses to start (exit 2, one line naming the variable) when a
secret it reads is weak: the controller checks SECRET_KEY, the worker and the agent INTERNAL_KEY.
"""

import sys

MIN_SECRET_LENGTH = 32

# Every example and placeholder value this repository shows for a secret (.env.example, the
# sample settings files, the README, the Docker build). Anyone can read them, so a deployment
# that kept one has no secret at all. tests/test_security.py checks that none is missed.
PUBLISHED_SECRETS = frozenset(
    {
        "change-me-to-a-long-random-string-of-fifty-characters-or-more",
        "change-me-to-another-long-random-string",
        "change-me-to-a-long-random-string",
        "change-me-postgres-password",
        "change-me-admin-password",
        "collectstatic-only-not-a-secret",
        "test-only",
    }
)


def weakness(name: str, value: str | None) -> str | None:
    """Why `value` is not fit to be `name` in production, or None when it is."""
    if value is None:
        return None
    if value in PUBLISHED_SECRETS:
        return f"{name} is a value published in this repository; set a fresh random one"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters; set a long random one"
    return None


def refuse_weak_secrets(*names: str) -> None:
    """Exit with status 2 and one line when DEBUG is off and a secret named here is weak."""
    from django.conf import settings

    if settings.DEBUG:
        return
    for name in names:
        problem = weakness(name, getattr(settings, name, None))
        if problem:
            sys.stderr.write(
                f"error: {problem} (python -c 'import secrets; "
                f"print(secrets.token_urlsafe(50))'); refusing to start with DEBUG off.\n"
            )
            sys.exit(2)
