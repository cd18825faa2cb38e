"""Log lines: one per event, text or JSON, and no access lines for successful probes."""

import json
import logging

import pytest

from protocol.logs import JsonFormatter, LineFormatter, SkipProbes


def record(message: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("test", logging.INFO, __file__, 1, message, None, exc_info)


def test_a_traceback_stays_on_one_line_in_both_formats():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record("it failed", sys.exc_info())
    text = LineFormatter("%(levelname)s %(message)s").format(failed)
    assert "\n" not in text and "ValueError: boom" in text
    entry = json.loads(JsonFormatter().format(failed))
    assert entry["message"] == "it failed" and "ValueError: boom" in entry["exc_info"]


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ('127.0.0.1 - - [t] "GET /health HTTP/1.1" 200 55 "-" "python-requests"', False),
        ('127.0.0.1:5 - "GET /healthz HTTP/1.1" 200', False),
        ('127.0.0.1:5 - "GET /metrics HTTP/1.1" 200', False),
        ('127.0.0.1:5 - "GET /readyz HTTP/1.1" 503', True),
        ('127.0.0.1 - - [t] "GET /hit HTTP/1.1" 200 12 "-" "curl"', True),
        ('127.0.0.1:5 - "PUT /config/admin HTTP/1.1" 200', True),
    ],
)
def test_successful_probes_and_scrapes_are_left_out_of_the_access_log(message, kept):
    assert SkipProbes().filter(record(message)) is kept
