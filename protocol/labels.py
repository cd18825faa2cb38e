"""Agent labels: the rules for them, shared by the agent that sends them and the controller that
stores them, so a label one side takes the other never refuses."""

import re

LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MAX_LABELS = 16


class InvalidLabels(ValueError):
    """Labels that break the rules; the message says which one and why."""


def check_labels(labels: object) -> dict[str, str]:
    """`labels` as a dict of strings, or InvalidLabels naming the first problem."""
    if not isinstance(labels, dict):
        raise InvalidLabels("labels must be a mapping of names to values")
    if len(labels) > MAX_LABELS:
        raise InvalidLabels(f"at most {MAX_LABELS} labels, got {len(labels)}")
    checked = {}
    for key, value in labels.items():
        # YAML reads `ring: 1` as a number: a plain number or word is taken as its text.
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        for what, text in (("key", key), ("value", value)):
            if not isinstance(text, str) or not LABEL_PATTERN.fullmatch(text):
                raise InvalidLabels(
                    f"label {what} {text!r} must be 1 to 63 letters, digits, '_', '.' or '-'"
                )
        checked[key] = value
    return checked


def parse_label_pairs(pairs: list[str]) -> dict[str, str]:
    """`["ring=canary", "zone=eu-1"]` (or one comma-separated string's items) as a dict."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.strip().partition("=")
        if not sep:
            raise InvalidLabels(f"label {pair!r} must be KEY=VALUE")
        key, value = key.strip(), value.strip()
        if key in labels:
            raise InvalidLabels(f"label {key!r} is given twice")
        labels[key] = value
    return check_labels(labels)
