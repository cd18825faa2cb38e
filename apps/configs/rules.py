"""The rules a configuration must satisfy, shared by the controller's API and the worker.

Kept free of models so that the worker, which has no database, applies exactly the same checks.
"""

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

MIN_POOLING_INTERVAL = 30
MAX_POOLING_INTERVAL = 86400
MAX_URL_LENGTH = 2048

_url_validator = URLValidator(schemes=["http", "https"])


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
    # URLValidator lets a NUL, other control characters and lone surrogates through in the
    # path; PostgreSQL cannot store them, SQLite would, and libcurl cannot fetch them.
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidConfig("config_url", "Must not contain control or surrogate characters.")
    try:
        _url_validator(value)
    except ValidationError:
        raise InvalidConfig("config_url", "Must be an absolute http or https URL.") from None
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
