"""One command-line convention for the three daemons: HOST:PORT binds, and bad input that
stops a command with one line and exit status 2."""

import socket


class UsageError(Exception):
    """Bad input on the command line or in the settings; stops the command with exit status 2."""


def parse_bind(value: str, flag: str = "--bind") -> tuple[str, int]:
    """Split HOST:PORT (a port from 1 to 65535), raising UsageError naming `flag`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} must be HOST:PORT with a port from 1 to 65535, got {value!r}.")
    return host.strip("[]"), int(port)


class PortInUse(Exception):
    """A port a process needs is taken by another program."""


def check_port_free(host: str, port: int, role: str, setting: str) -> None:
    """Raise PortInUse, naming the port and the setting to change, when another program holds
    `port` (SO_REUSEADDR only: a socket in TIME_WAIT does not count, a listener does)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {host} is already in use ({exc.strerror}); the {role} needs "
                f"it. Stop the program holding it, or pick another port with {setting}."
            ) from None
