"""Secrets that must not reach production: too short, or published in this repository.

With DEBUG off, each process refuses to start (exit 2, one line naming the variable) when a
secret it reads is weak: the controller checks SECRET_KEY, the worker and the agent INTERNAL_KEY.
"""

import sys

from protocol.secrets import weakness


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
