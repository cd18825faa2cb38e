"""Log formatters: every event is exactly one line on stderr, as text or as a JSON object.

Collectors (Docker, journald, Loki) split a stream on newlines, so a traceback spread over many
lines turns into many unrelated events. Both formatters keep an event on one line.
"""

import json
import logging
from datetime import UTC, datetime


class LineFormatter(logging.Formatter):
    """The usual text format, with newlines inside the event (tracebacks) escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per event: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class SkipProbes(logging.Filter):
    """Drops the access lines of successful health checks and scrapes.

    Every agent checks its workers every few seconds, and probes and Prometheus call the
    controller as often: logged, those lines would bury the requests that matter. Failed
    probes are kept."""

    PATHS = (" /health ", " /healthz ", " /readyz ", " /metrics ")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(path in message for path in self.PATHS):
            return True
        return not (" 200 " in message or message.endswith(" 200"))


LOG_FORMATS = ("text", "json")


def read_log_settings(reader) -> tuple[str, str]:
    """LOG_LEVEL and LOG_FORMAT, the two logging settings every process reads."""
    level = reader.str("LOG_LEVEL", "INFO").upper()
    fmt = reader.str("LOG_FORMAT", "text").lower()
    if fmt not in LOG_FORMATS:
        raise reader.error(f"LOG_FORMAT must be text or json: {fmt!r}")
    return level, fmt


def logging_config(level: str, fmt: str) -> dict:
    """A dictConfig: one line per event on stderr, as text or JSON, at `level`. stdout is left
    to what a command prints for its caller to read (create_registration_token's token)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {
                "()": "protocol.logs.LineFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            },
            "json": {"()": "protocol.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Python warnings (Django routes them to logging) are events like any other.
            "py.warnings": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        },
    }


def server_logging_config(config: dict) -> dict:
    """`config` plus an `access` handler for an HTTP server's access lines, which drops the
    successful probes and scrapes (SkipProbes)."""
    return {
        **config,
        "filters": {"skip_probes": {"()": "protocol.logs.SkipProbes"}},
        "handlers": {
            **config["handlers"],
            "access": {**config["handlers"]["console"], "filters": ["skip_probes"]},
        },
    }
