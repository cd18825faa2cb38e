"""The authentication matrix against a real controller and worker: every protected endpoint
with every kind of credential, replayed and tampered pushes, and a login brute force."""

import json
import time
from datetime import timedelta

import pytest
import requests
from rest_framework_simplejwt.tokens import AccessToken

from apps.agents.services import issue_registration_token, register_agent, revoke_agent
from tests.e2e.conftest import INTERNAL_KEY, Admin
from tests.e2e.reliability import record
from tests.support.worker import config_body, signed_headers

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

# (method, path, body, who may call it)
ENDPOINTS = [
    ("get", "/config/admin", None, "admin"),
    ("put", "/config/admin", {"pooling_interval": 45}, "admin"),
    ("post", "/config/admin", {"config_url": "http://a.example/", "pooling_interval": 30}, "admin"),
    ("get", "/config/admin/history", None, "admin"),
    ("post", "/config/admin/rollback", {"version": 1}, "admin"),
    ("get", "/agent/admin", None, "admin"),
    ("get", "/agents", None, "admin"),
    ("post", "/agents/{victim}/revoke", None, "admin"),
    ("get", "/audit", None, "admin"),
    ("get", "/config/version", None, "agent"),
    ("get", "/config/version?version=1&wait=1", None, "agent"),
    ("get", "/config/agent", None, "agent"),
    ("post", "/agent/heartbeat", {"applied_version": 1, "workers": []}, "agent"),
    ("post", "/agent/register", {"name": "n"}, "registration"),
]


def test_only_the_right_credential_passes(stack, upstream, admin_user):
    _, url = stack.controller(None)
    admin = Admin(url)
    assert admin.create(upstream.url("/text")).status_code == 201
    agent_token = register_agent(token=issue_registration_token()[0])[1]
    revoked, revoked_token = register_agent(token=issue_registration_token()[0])
    revoke_agent(revoked)
    expired = AccessToken.for_user(admin_user)
    expired.set_exp(lifetime=-timedelta(minutes=1))
    fixed = {
        "none": None,
        "garbage": "Bearer not-a-token-at-all",
        "expired JWT": f"Bearer {expired}",
        "agent": f"Bearer {agent_token}",
        "admin": admin.session.headers["Authorization"],
        "revoked agent": f"Bearer {revoked_token}",
    }
    calls = 0
    for method, path, body, allowed in ENDPOINTS:
        for kind in [*fixed, "registration"]:
            if kind == "registration":
                credential = f"Bearer {issue_registration_token()[0]}"
            else:
                credential = fixed[kind]
            if "{victim}" in path:
                victim = register_agent(token=issue_registration_token()[0])[0]
                target = path.format(victim=victim.pk)
            else:
                target = path
            headers = {"Authorization": credential} if credential else {}
            answer = requests.request(method, url + target, json=body, headers=headers, timeout=15)
            calls += 1
            assert answer.status_code < 500, (method, path, kind, answer.text)
            if kind == allowed:
                assert answer.status_code not in (401, 403), (method, path, kind, answer.text)
            else:
                assert answer.status_code in (401, 403), (method, path, kind, answer.status_code)
                assert answer.headers["Content-Type"].startswith("application/json")
    # The refused credentials changed nothing: one accepted PUT, POST and rollback each.
    history = admin.session.get(f"{url}/config/admin/history", timeout=10).json()
    assert history["count"] == 4

    # Login brute force: wrong passwords are throttled with 429 and Retry-After.
    statuses = []
    for n in range(15):
        answer = requests.post(
            f"{url}/login",
            json={"email": admin_user.email, "password": f"wrong-guess-{n}"},
            timeout=10,
        )
        statuses.append(answer.status_code)
    assert set(statuses[:10]) == {401}
    assert set(statuses[10:]) == {429}
    assert "Retry-After" in answer.headers
    record(
        "auth-matrix",
        f"{len(ENDPOINTS)} protected calls x 7 credentials (none, garbage, expired JWT, "
        f"registration token, agent token, admin JWT, revoked agent token): only the right one "
        f"passed; the 11th wrong password in a minute got 429.",
        errors_5xx=0,
        versions_lost=0,
        matrix_calls=calls,
        brute_force_429s=statuses.count(429),
    )


def test_replayed_and_tampered_pushes_are_refused(stack):
    _, worker = stack.worker()
    body = json.dumps(config_body(version=2)).encode()
    old = signed_headers(body, INTERNAL_KEY, now=time.time() - 301)
    assert requests.post(f"{worker}/config", data=body, headers=old, timeout=5).status_code == 401
    fresh = signed_headers(body, INTERNAL_KEY)
    tampered = body.replace(b'"version": 2', b'"version": 9')
    assert tampered != body
    answer = requests.post(f"{worker}/config", data=tampered, headers=fresh, timeout=5)
    assert answer.status_code == 401
    assert requests.get(f"{worker}/config", timeout=5).status_code == 404
    assert requests.post(f"{worker}/config", data=body, headers=fresh, timeout=5).ok
    record(
        "auth-matrix",
        "A signed push replayed 301 s late and one with a tampered body were refused (401); "
        "the worker held nothing until the genuine push.",
        refused_pushes=2,
    )
