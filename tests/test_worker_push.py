"""POST /config on the worker's WSGI app, in process: who may push, what is accepted, and which
version wins."""

import json
import logging
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import signing
from tests.support.worker import KEY, call, config_body, push, signed_headers
from worker.app import MAX_PUSH_BYTES, WorkerApp


@pytest.fixture
def app():
    return WorkerApp(internal_key=KEY)


@pytest.fixture
def plain_app():
    """A worker that still takes the seed's plain X-Internal-Key (WORKER_REQUIRE_SIGNATURE off)."""
    return WorkerApp(internal_key=KEY, require_signature=False)


@pytest.fixture
def app_with_v1(app):
    assert push(app, config_body(1)).status_code == 200
    return app


def held(app) -> dict:
    response = call(app, "GET", "/config")
    assert response.status_code == 200
    return response.json()


def test_get_config_is_404_before_the_first_push(app):
    response = call(app, "GET", "/config")

    assert response.status_code == 404
    assert "detail" in response.json()


def test_signed_push_is_applied_and_shown_by_get_config(app):
    body = config_body(3, url="http://127.0.0.1:8000/ip")

    response = push(app, body)

    assert response.status_code == 200
    assert response.json() == {"applied": True, "version": 3}
    shown = held(app)
    assert {key: shown[key] for key in body} == body
    assert shown["received_at"].endswith("Z")
    health = call(app, "GET", "/health").json()
    assert health["status"] == "ok"
    assert health["config_version"] == 3
    assert health["uptime_s"] >= 0


def test_uuid_is_stored_in_canonical_form(app):
    push(app, config_body(1, uuid="6F1C1D2E8C3A4E5B9F00123456789ABC"))

    assert held(app)["uuid"] == "6f1c1d2e-8c3a-4e5b-9f00-123456789abc"


# Authentication


def test_signature_with_a_wrong_key_is_401_and_changes_nothing(app_with_v1):
    before = held(app_with_v1)
    raw = json.dumps(config_body(2)).encode()

    response = push(app_with_v1, raw, signed_headers(raw, key="not-the-key"))

    assert response.status_code == 401
    assert "does not match" in response.json()["detail"]
    assert held(app_with_v1) == before


def test_tampered_body_is_401_and_changes_nothing(app_with_v1):
    before = held(app_with_v1)
    signed = json.dumps(config_body(2)).encode()
    tampered = json.dumps(config_body(2, url="http://127.0.0.1:6666/")).encode()

    response = push(app_with_v1, tampered, signed_headers(signed))

    assert response.status_code == 401
    assert held(app_with_v1) == before


@pytest.mark.parametrize("offset", [-301, 301, -3600, 10**9])
def test_timestamp_more_than_300_s_off_is_401(app_with_v1, offset):
    before = held(app_with_v1)
    raw = json.dumps(config_body(2)).encode()

    response = push(app_with_v1, raw, signed_headers(raw, now=time.time() + offset))

    assert response.status_code == 401
    assert "300 s" in response.json()["detail"]
    assert held(app_with_v1) == before


@pytest.mark.parametrize("offset", [-250, 250])
def test_timestamp_within_300_s_is_accepted(app, offset):
    raw = json.dumps(config_body(1)).encode()

    response = push(app, raw, signed_headers(raw, now=time.time() + offset))

    assert response.status_code == 200


def test_missing_auth_headers_is_401_and_changes_nothing(app_with_v1):
    before = held(app_with_v1)

    response = push(app_with_v1, config_body(2), headers={"Content-Type": "application/json"})

    assert response.status_code == 401
    assert response.json()["detail"] == "missing X-Signature"
    assert held(app_with_v1) == before


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "t=1,v1=", "v1=00", "t=1,t=2,v1=00", "t=1,v1=\u00e9\u00e9"],
)
def test_malformed_signature_is_401(app_with_v1, header):
    before = held(app_with_v1)

    response = push(app_with_v1, config_body(2), headers={"X-Signature": header})

    assert response.status_code == 401
    assert held(app_with_v1) == before


def test_plain_internal_key_is_accepted_when_signatures_are_not_required(plain_app):
    response = push(plain_app, config_body(1), headers={"X-Internal-Key": KEY})

    assert response.status_code == 200
    assert response.json() == {"applied": True, "version": 1}


@pytest.mark.parametrize("given_key", ["wrong", KEY + "x", KEY[:-1], "", "\u00e9"])
def test_wrong_plain_internal_key_is_401_and_changes_nothing(plain_app, given_key):
    assert push(plain_app, config_body(1)).status_code == 200
    before = held(plain_app)

    response = push(plain_app, config_body(2), headers={"X-Internal-Key": given_key})

    assert response.status_code == 401
    assert response.json() == {"detail": "wrong X-Internal-Key"}
    assert held(plain_app) == before


def test_plain_internal_key_is_401_by_default():
    # The plain key is the same on every push: whoever saw one push may send it with any body.
    app = WorkerApp(internal_key=KEY)

    response = push(app, config_body(1), headers={"X-Internal-Key": KEY})

    assert response.status_code == 401
    assert "X-Signature is required" in response.json()["detail"]
    assert call(app, "GET", "/config").status_code == 404
    assert push(app, config_body(1)).status_code == 200


def test_a_present_signature_alone_decides(app):
    raw = json.dumps(config_body(1)).encode()
    bad_signature = {"X-Signature": signing.sign(raw, "wrong"), "X-Internal-Key": KEY}

    assert push(app, raw, headers=bad_signature).status_code == 401
    assert call(app, "GET", "/config").status_code == 404


def test_neither_the_key_nor_the_signature_is_logged(app, caplog):
    raw = json.dumps(config_body(1)).encode()
    headers = signed_headers(raw)
    with caplog.at_level(logging.DEBUG, logger="worker"):
        push(app, raw, headers)
        push(app, raw, signed_headers(raw, key="wrong"))
        push(app, config_body(2), headers={"X-Internal-Key": KEY + "x"})
        push(app, config_body(0), headers={"X-Internal-Key": KEY})

    assert "config applied v1" in caplog.text
    assert "push refused" in caplog.text
    assert KEY not in caplog.text
    assert headers["X-Signature"].split("v1=")[1] not in caplog.text


# Versions


def test_newer_version_replaces_the_config(app_with_v1):
    response = push(app_with_v1, config_body(5, url="http://127.0.0.1:8000/five"))

    assert response.status_code == 200
    assert response.json() == {"applied": True, "version": 5}
    assert held(app_with_v1)["config_url"] == "http://127.0.0.1:8000/five"


def test_the_version_held_is_a_no_op(app_with_v1):
    before = held(app_with_v1)

    response = push(app_with_v1, config_body(1, url="http://127.0.0.1:8000/other"))

    assert response.status_code == 200
    assert response.json() == {"applied": False, "version": 1}
    assert held(app_with_v1) == before


def test_an_older_version_is_409_and_never_rolls_back(app):
    push(app, config_body(4))
    before = held(app)
    replayed = json.dumps(config_body(3)).encode()

    response = push(app, replayed, signed_headers(replayed))

    assert response.status_code == 409
    assert response.json()["version"] == 4
    assert held(app) == before


def test_a_signed_push_sent_again_is_refused_as_a_replay():
    app = WorkerApp(internal_key=KEY, require_signature=True)
    raw = json.dumps(config_body(2)).encode()
    headers = signed_headers(raw)
    assert push(app, raw, headers).status_code == 200
    before = held(app)

    # A captured push, still inside its 300 s window, is sent again.
    response = push(app, raw, headers)

    assert response.status_code == 401
    assert response.json()["detail"] == signing.REPLAYED_PUSH
    assert held(app) == before


def test_a_replayed_signature_respelled_is_still_a_replay():
    app = WorkerApp(internal_key=KEY, require_signature=True)
    raw = json.dumps(config_body(2)).encode()
    headers = signed_headers(raw)
    assert push(app, raw, headers).status_code == 200
    spaced = headers["X-Signature"].replace(",", " , ")
    assert signing.verify(spaced, raw, KEY) is None  # the same signature, spelled otherwise

    response = push(app, raw, {**headers, "X-Signature": spaced})

    assert response.status_code == 401
    assert response.json()["detail"] == signing.REPLAYED_PUSH


def test_the_replay_memory_forgets_a_signature_once_it_is_stale_anyway():
    seen = signing.SeenSignatures()
    now = time.time()
    header = signing.sign(b"{}", KEY, now=now)
    seen.remember(header, now=now)
    with pytest.raises(signing.BadSignature, match="already used"):
        seen.remember(header.replace(",", ", "), now=now + signing.TOLERANCE_SECONDS)
    # Past the window verify() refuses it as stale; the memory need not keep it.
    seen.remember(header, now=now + signing.TOLERANCE_SECONDS + 2)


def test_concurrent_pushes_and_reads_end_on_the_highest_version(app):
    versions = list(range(1, 101))
    seen_going_back = []
    statuses = []
    done = threading.Event()

    def pusher(mine):
        for version in mine:
            statuses.append(push(app, config_body(version)).status_code)

    def reader():
        last = 0
        while not done.is_set():
            response = call(app, "GET", "/config")
            if response.status_code == 200:
                version = response.json()["version"]
                if version < last:
                    seen_going_back.append((last, version))
                last = version
            time.sleep(0.001)  # let the pushers run: a spinning reader starves them of the GIL

    pushers = [threading.Thread(target=pusher, args=(versions[i::4],)) for i in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers + pushers:
        thread.start()
    for thread in pushers:
        thread.join()
    done.set()
    for thread in readers:
        thread.join()

    assert len(statuses) == 100 and set(statuses) <= {200, 409}, statuses
    assert held(app)["version"] == 100
    assert seen_going_back == []


# Body


def test_malformed_json_is_400_and_changes_nothing(app_with_v1):
    before = held(app_with_v1)

    response = push(app_with_v1, b'{"config_url": ')

    assert response.status_code == 400
    assert response.json() == {"detail": "Body must be valid JSON."}
    assert held(app_with_v1) == before


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'"text"', b"null", b"42", b"", b"\xff\xfe\x00", b"NaN", b"[" * 5000 + b"]" * 5000],
)
def test_a_body_that_is_not_a_json_object_is_400(app_with_v1, raw):
    before = held(app_with_v1)

    response = push(app_with_v1, raw)

    assert response.status_code == 400
    assert "detail" in response.json()
    assert held(app_with_v1) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("config_url", "ftp://127.0.0.1/file"),
        ("config_url", "not a url"),
        ("config_url", 123),
        ("config_url", None),
        ("config_url", "http://user:secret@127.0.0.1/"),
        ("config_url", "http://127.0.0.1/" + "a" * 2048),
        ("pooling_interval", 29),
        ("pooling_interval", 86401),
        ("pooling_interval", "60"),
        ("pooling_interval", 60.0),
        ("pooling_interval", True),
        ("version", 0),
        ("version", -1),
        ("version", "2"),
        ("version", 2.0),
        ("version", True),
        ("version", None),
        ("version", 2**63),
        ("uuid", "not-a-uuid"),
        ("uuid", ""),
        ("uuid", 123),
        ("uuid", None),
    ],
)
def test_an_invalid_field_is_400_naming_it_and_changes_nothing(app_with_v1, field, value):
    before = held(app_with_v1)

    body = config_body(2)
    body[field] = value

    response = push(app_with_v1, body)

    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert isinstance(errors[field], list) and errors[field]
    assert held(app_with_v1) == before


def test_missing_fields_are_each_named(app):
    response = push(app, {"version": 1})

    assert response.status_code == 400
    assert response.json() == {
        "config_url": ["This field is required."],
        "pooling_interval": ["This field is required."],
        "uuid": ["This field is required."],
    }


def test_unknown_fields_are_ignored(app):
    response = push(app, config_body(1, created_at="2026-01-01T00:00:00Z"))

    assert response.status_code == 200


def test_a_body_over_the_cap_is_413_and_changes_nothing(app_with_v1):
    before = held(app_with_v1)
    raw = json.dumps(config_body(2, padding="x" * MAX_PUSH_BYTES)).encode()

    response = push(app_with_v1, raw)

    assert response.status_code == 413
    assert held(app_with_v1) == before


def test_a_chunked_body_over_the_cap_is_413(app_with_v1):
    raw = json.dumps(config_body(2, padding="x" * MAX_PUSH_BYTES)).encode()

    response = call(
        app_with_v1,
        "POST",
        "/config",
        raw,
        headers=signed_headers(raw),
        content_length=False,
        extra_environ={"wsgi.input_terminated": True},
    )

    assert response.status_code == 413


def test_an_unauthenticated_body_is_refused_before_it_is_read(app):
    class Unreadable:
        def read(self, *args):
            raise AssertionError("the body was read")

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/config",
        "CONTENT_LENGTH": "100",
        "wsgi.input": Unreadable(),
    }
    statuses = []

    body = app(environ, lambda status, headers: statuses.append(status))

    assert statuses == ["401 Unauthorized"]
    assert json.loads(b"".join(body)) == {"detail": "missing X-Signature"}


def test_pushes_are_counted_by_result(app):
    push(app, config_body(2))
    # The same config signed anew (the same signature again would be a replay).
    again = json.dumps(config_body(2)).encode()
    push(app, again, headers=signed_headers(again, now=time.time() - 1))
    push(app, config_body(1))
    push(app, config_body(3), headers={"X-Internal-Key": "wrong"})
    push(app, b"{")

    metrics = call(app, "GET", "/metrics").body.decode()

    assert 'worker_config_pushes_total{result="applied"} 1.0' in metrics
    assert 'worker_config_pushes_total{result="unchanged"} 1.0' in metrics
    assert 'worker_config_pushes_total{result="stale"} 1.0' in metrics
    assert 'worker_config_pushes_total{result="unauthorized"} 1.0' in metrics
    assert 'worker_config_pushes_total{result="invalid"} 1.0' in metrics
    assert "worker_config_version 2.0" in metrics


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_push_like = st.fixed_dictionaries(
    {},
    optional={
        "config_url": _json_values | st.text(),
        "pooling_interval": _json_values,
        "version": _json_values,
        "uuid": _json_values | st.uuids().map(str),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_push_like | _json_values)
def test_no_push_body_gets_a_500(body):
    app = WorkerApp(internal_key=KEY)

    response = push(app, json.dumps(body).encode())

    assert response.status_code in (200, 400)
    assert isinstance(response.json(), dict)
