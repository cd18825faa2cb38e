#!/usr/bin/env python
import os
import sys
from importlib import import_module

from protocol.config_file import ConfigFileError, role_from_argv, take_config_file

# The worker and the agent run next to every service of a fleet and need none of the
# controller's apps or settings: their own packages run these commands, before Django loads.
DAEMONS = {"run_worker": "worker.command", "run_agent": "agent.command"}


def main() -> None:
    try:
        path = take_config_file(sys.argv)
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command in DAEMONS:
            sys.exit(import_module(DAEMONS[command]).main(sys.argv[2:], path))
        if path:
            os.environ["CONFIG_FILE"] = path
        os.environ["CONFIG_ROLE"] = role_from_argv(sys.argv, os.environ.get("CONFIG_ROLE"))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controller_site.settings")
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ConfigFileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
