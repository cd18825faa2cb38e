"""Secrets that must not reach production: too short, or published in this repository.

Shared by the controller (SECRET_KEY, with DEBUG off) and the worker and the agent
(INTERNAL_KEY), which read no DEBUG and so always refuse a weak key. No Django here.
"""

MIN_SECRET_LENGTH = 32

# Every example and placeholder value this repository shows for a secret (.env.example, the
# sample settings files, the README and docs/, the Docker build). Anyone can read them, so a
# deployment that kept one has no secret at all. tests/test_security.py checks that none is missed.
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
# Marks of values that were written into this repository as stand-ins (the Kubernetes dev
# overlay once shipped `dev-only-…` keys, the tests and benchmarks `test-only-…` and
# `bench-only-…` ones). Those are published too; the dev overlay, the tests and the benchmarks
# now make their keys afresh, so nothing needs them to pass.
PUBLISHED_PREFIXES = ("dev-only-", "test-only-", "bench-only-")


def weakness(name: str, value: str | None) -> str | None:
    """Why `value` is not fit to be `name` in production, or None when it is."""
    if value is None:
        return None
    if value in PUBLISHED_SECRETS or value.startswith(PUBLISHED_PREFIXES):
        return f"{name} is a value published in this repository; set a fresh random one"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters; set a long random one"
    return None
