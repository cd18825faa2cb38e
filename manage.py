#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controller_site.settings")
    from django.core.management import execute_from_command_line

    from protocol.config_file import (
        ConfigFileError,
        role_from_argv,
        take_config_file,
    )

    try:
        path = take_config_file(sys.argv)
        if path:
            os.environ["CONFIG_FILE"] = path
        os.environ["CONFIG_ROLE"] = role_from_argv(sys.argv, os.environ.get("CONFIG_ROLE"))
        execute_from_command_line(sys.argv)
    except ConfigFileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
