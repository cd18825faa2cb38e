"""The rules each field of a configuration must satisfy, in the controller, agent and worker alike.

Kept free of models and settings so that the worker and the agent, which have no database,
apply exactly the checks the controller applies. No Django here: the agent and the worker load
without it.
"""

import ipaddress
import re
import uuid
from urllib.parse import urlsplit

MIN_POOLING_INTERVAL = 30
MAX_POOLING_INTERVAL = 86400
MAX_URL_LENGTH = 2048
# The largest version the controller's 64-bit column can hold.
MAX_VERSION = 2**63 - 1


# The URL check is Django's URLValidator(schemes=["http", "https"]) (Django 5.2) without Django:
# the same pattern and the same three checks around it. tests/test_protocol.py holds the two to
# the same answers.
_UNICODE_LETTERS = "\u00a1-\uffff"
_IPV4 = (
    r"(?:0|25[0-5]|2[0-4][0-9]|1[0-9]?[0-9]?|[1-9][0-9]?)"
    r"(?:\.(?:0|25[0-5]|2[0-4][0-9]|1[0-9]?[0-9]?|[1-9][0-9]?)){3}"
)
_IPV6 = r"\[[0-9a-f:.]+\]"  # loose here, checked with ipaddress afterwards
_HOSTNAME = (
    r"[a-z" + _UNICODE_LETTERS + r"0-9](?:[a-z" + _UNICODE_LETTERS + r"0-9-]{0,61}"
    r"[a-z" + _UNICODE_LETTERS + r"0-9])?"
)
_DOMAIN = r"(?:\.(?!-)[a-z" + _UNICODE_LETTERS + r"0-9-]{1,63}(?<!-))*"
_TLD = r"\.(?!-)(?:[a-z" + _UNICODE_LETTERS + r"-]{2,63}|xn--[a-z0-9]{1,59})(?<!-)\.?"
_URL = re.compile(
    r"^(?:[a-z0-9.+-]*)://"  # the scheme is checked on its own
    r"(?:[^\s:@/]+(?::[^\s:@/]*)?@)?"  # user:password (refused afterwards)
    r"(?:" + _IPV4 + "|" + _IPV6 + "|(" + _HOSTNAME + _DOMAIN + _TLD + "|localhost))"
    r"(?::[0-9]{1,5})?"  # port
    r"(?:[/?#][^\s]*)?"  # path, query, fragment
    r"\Z",
    re.IGNORECASE,
)
_UNSAFE_CHARACTERS = frozenset("\t\r\n")
_BRACKETED_HOST = re.compile(r"^\[(.+)\](?::[0-9]{1,5})?$")
_URL_SCHEMES = ("http", "https")
# RFC 1034 section 3.1: 255 bytes, less the length byte and the trailing dot.
_MAX_HOSTNAME_LENGTH = 253
_MAX_IPV6_LENGTH = 39


def _is_ipv6(text: str) -> bool:
    if len(text) > _MAX_IPV6_LENGTH:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_http_url(value: str) -> bool:
    """Whether `value` is an absolute http or https URL, by Django's URLValidator's rules."""
    if len(value) > MAX_URL_LENGTH or not _UNSAFE_CHARACTERS.isdisjoint(value):
        return False
    if value.split("://")[0].lower() not in _URL_SCHEMES:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if not _URL.search(value):
        return False
    bracketed = _BRACKETED_HOST.search(parts.netloc)
    if bracketed and not _is_ipv6(bracketed[1]):
        return False
    return parts.hostname is not None and len(parts.hostname) <= _MAX_HOSTNAME_LENGTH


class InvalidConfig(ValueError):
    """A configuration field that breaks a rule; `field` names it for the 400 answer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check_config_url(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidConfig("config_url", "Must be a string holding an absolute http or https URL.")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidConfig("config_url", f"Must be at most {MAX_URL_LENGTH} characters.")
    # The URL pattern lets a NUL, other control characters and lone surrogates through in the
    # path; PostgreSQL cannot store them, SQLite would, and libcurl cannot fetch them.
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidConfig("config_url", "Must not contain control or surrogate characters.")
    if not is_http_url(value):
        raise InvalidConfig("config_url", "Must be an absolute http or https URL.")
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise InvalidConfig("config_url", "Must not contain a user name or password.")
    return value


def check_pooling_interval(value: object) -> int:
    # bool is an int subclass and "45" or 45.0 would be silently coerced: refuse them all.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig("pooling_interval", "Must be a whole number of seconds.")
    if not MIN_POOLING_INTERVAL <= value <= MAX_POOLING_INTERVAL:
        raise InvalidConfig(
            "pooling_interval",
            f"Must be between {MIN_POOLING_INTERVAL} and {MAX_POOLING_INTERVAL} seconds.",
        )
    return value


def check_version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfig("version", "Must be a whole number.")
    if not 1 <= value <= MAX_VERSION:
        raise InvalidConfig("version", f"Must be between 1 and {MAX_VERSION}.")
    return value


def check_uuid(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidConfig("uuid", "Must be a string holding a UUID.")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidConfig("uuid", "Must be a valid UUID.") from None


# An application's or environment's name reads well in a URL, a metric label and a command line:
# 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit (never taken for an
# option).
SCOPE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SCOPE_NAME_RULE = "1-63 characters of a-z, 0-9 and -, starting with a letter or a digit"


def is_scope_name(name: str) -> bool:
    return re.fullmatch(SCOPE_NAME_PATTERN, name) is not None
