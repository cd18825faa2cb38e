"""Running the management commands a test checks by their exit status and what they print."""

import io

from django.core.management import CommandError, call_command


def rollout_status(*args: str) -> tuple[int, str]:
    """`rollout_status ARGS`: (its exit status, what it printed or the usage error's message)."""
    out = io.StringIO()
    try:
        call_command("rollout_status", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    except CommandError as exc:
        return exc.returncode, str(exc)
    raise AssertionError("rollout_status always exits with a status")
