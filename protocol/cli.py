"""One command-line convention for the three daemons: HOST:PORT binds, and bad input that
stops a command with one line and exit status 2."""


class UsageError(Exception):
    """Bad input on the command line or in the settings; stops the command with exit status 2."""


def parse_bind(value: str, flag: str = "--bind") -> tuple[str, int]:
    """Split HOST:PORT (a port from 1 to 65535), raising UsageError naming `flag`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} must be HOST:PORT with a port from 1 to 65535, got {value!r}.")
    return host.strip("[]"), int(port)
