"""Property tests: the push signature and the config validators against generated input."""

import functools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from protocol import signing
from protocol.rules import (
    MAX_POOLING_INTERVAL,
    MAX_URL_LENGTH,
    MIN_POOLING_INTERVAL,
    InvalidConfig,
    check_config_url,
    check_pooling_interval,
)
from tests.e2e.reliability import record

NOW = 1_800_000_000.0
keys = st.text(min_size=1, max_size=64)
EXAMPLES = 300
OBSERVED = (
    "Signatures round-trip within the 300 s tolerance; every single tampered byte, wrong key, "
    "stale timestamp and garbage header is refused; the URL and interval validators accept "
    "exactly what the contract allows and refuse the rest with a field error."
)


COUNTS: Counter[str] = Counter()


def counted(prop):
    """Count the examples a property runs: one that generated nothing proved nothing, and the
    record refuses it."""

    @functools.wraps(prop)
    def run(*args, **kwargs):
        COUNTS[prop.__name__] += 1
        return prop(*args, **kwargs)

    return run


def run_and_record(prop) -> None:
    before = COUNTS[prop.__name__]
    prop()
    record("properties", OBSERVED, generated_examples=COUNTS[prop.__name__] - before)


@settings(max_examples=EXAMPLES)
@given(body=st.binary(max_size=4096), key=keys, skew=st.integers(-300, 300))
@counted
def a_signature_verifies_its_body_within_the_tolerance(body, key, skew):
    signing.verify(signing.sign(body, key, now=NOW), body, key, now=NOW + skew)


@settings(max_examples=EXAMPLES)
@given(body=st.binary(min_size=1, max_size=2048), key=keys, data=st.data())
@counted
def any_tampered_byte_is_refused(body, key, data):
    header = signing.sign(body, key, now=NOW)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(signing.BadSignature):
        signing.verify(header, tampered, key, now=NOW)


@settings(max_examples=EXAMPLES)
@given(body=st.binary(max_size=512), key=keys, other=keys, late=st.integers(301, 10**6))
@counted
def a_wrong_key_or_a_stale_timestamp_is_refused(body, key, other, late):
    header = signing.sign(body, key, now=NOW)
    if other != key:
        with pytest.raises(signing.BadSignature):
            signing.verify(header, body, other, now=NOW)
    with pytest.raises(signing.BadSignature):
        signing.verify(header, body, key, now=NOW + late)


@settings(max_examples=EXAMPLES)
@given(header=st.text(max_size=200), body=st.binary(max_size=64))
@counted
def any_garbage_header_is_refused_with_bad_signature_only(header, body):
    with pytest.raises(signing.BadSignature):
        signing.verify(header, body, "key", now=NOW)


@settings(max_examples=EXAMPLES)
@given(url=urls())
@counted
def generated_http_urls_are_accepted_up_to_the_length_limit(url):
    if len(url) > MAX_URL_LENGTH:
        with pytest.raises(InvalidConfig):
            check_config_url(url)
        return
    # hypothesis' URLs are http(s) with a domain name and no credentials: all acceptable.
    assert check_config_url(url) == url
    longest = url + "x" * (MAX_URL_LENGTH + 1 - len(url))
    with pytest.raises(InvalidConfig):
        check_config_url(longest)


@settings(max_examples=EXAMPLES)
@given(value=st.one_of(st.text(max_size=300), st.integers(), st.none(), st.floats(), st.binary()))
@counted
def the_url_validator_takes_any_value_and_refuses_non_urls_cleanly(value):
    try:
        result = check_config_url(value)
    except InvalidConfig as exc:
        assert exc.field == "config_url"
    else:
        assert isinstance(result, str) and result.split("://", 1)[0] in ("http", "https")
        assert len(result) <= MAX_URL_LENGTH


@settings(max_examples=EXAMPLES)
@given(
    value=st.one_of(
        st.integers(), st.booleans(), st.floats(), st.text(max_size=10), st.none(), st.decimals()
    )
)
@counted
def the_interval_validator_accepts_exactly_whole_seconds_in_range(value):
    in_range = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_POOLING_INTERVAL <= value <= MAX_POOLING_INTERVAL
    )
    if in_range:
        assert check_pooling_interval(value) == value
    else:
        with pytest.raises(InvalidConfig) as refused:
            check_pooling_interval(value)
        assert refused.value.field == "pooling_interval"


def test_a_signature_verifies_its_body_within_the_tolerance():
    run_and_record(a_signature_verifies_its_body_within_the_tolerance)


def test_any_tampered_byte_is_refused():
    run_and_record(any_tampered_byte_is_refused)


def test_a_wrong_key_or_a_stale_timestamp_is_refused():
    run_and_record(a_wrong_key_or_a_stale_timestamp_is_refused)


def test_any_garbage_header_is_refused_with_bad_signature_only():
    run_and_record(any_garbage_header_is_refused_with_bad_signature_only)


def test_generated_http_urls_are_accepted_up_to_the_length_limit():
    run_and_record(generated_http_urls_are_accepted_up_to_the_length_limit)


def test_the_url_validator_takes_any_value_and_refuses_non_urls_cleanly():
    run_and_record(the_url_validator_takes_any_value_and_refuses_non_urls_cleanly)


def test_the_interval_validator_accepts_exactly_whole_seconds_in_range():
    run_and_record(the_interval_validator_accepts_exactly_whole_seconds_in_range)
