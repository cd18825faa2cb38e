"""The authentication matrix against a real controller and worker: every protected endpoint
with every kind of credential, replayed and tampered pushes, and a login brute force."""

import http.client
import json
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
import requests

from apps.accounts.services import issue_tokens
from apps.agents.models import RegistrationToken
from apps.agents.services import issue_registration_token, register_agent, revoke_agent
from apps.audit.models import AuditEntry
from protocol.secrets import weakness
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.e2e.conftest import INTERNAL_KEY, Admin
from tests.e2e.reliability import record
from tests.e2e.security import record_attack
from tests.support.processes import (
    ROOT,
    base_env,
    free_port,
    manage,
    server_errors,
    wait_until,
)
from tests.support.processes import (
    test_database_url as database_url,
)
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
    expired = issue_tokens(admin_user).access_token
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
    wrong: list = []
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
            if kind == allowed:
                right = answer.status_code < 500 and answer.status_code not in (401, 403)
            else:
                right = answer.status_code in (401, 403) and answer.headers[
                    "Content-Type"
                ].startswith("application/json")
            if not right:
                wrong.append((method, path, kind, answer.status_code, answer.text[:200]))
    assert not wrong, wrong
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
        outcomes={"as its credential requires": calls - len(wrong), "otherwise": len(wrong)},
        failed_outcomes=["otherwise"],
        unexpected_5xx=server_errors(url),
        brute_force_429s=statuses.count(429),
    )


def test_replayed_and_tampered_pushes_are_refused(stack):
    _, worker = stack.worker()
    body = json.dumps(config_body(version=2)).encode()
    old = signed_headers(body, INTERNAL_KEY, now=time.time() - 301)
    refused = [requests.post(f"{worker}/config", data=body, headers=old, timeout=5).status_code]
    assert refused == [401]
    fresh = signed_headers(body, INTERNAL_KEY)
    tampered = body.replace(b'"version": 2', b'"version": 9')
    assert tampered != body
    answer = requests.post(f"{worker}/config", data=tampered, headers=fresh, timeout=5)
    refused.append(answer.status_code)
    assert answer.status_code == 401
    assert requests.get(f"{worker}/config", timeout=5).status_code == 404
    assert requests.post(f"{worker}/config", data=body, headers=fresh, timeout=5).ok
    record(
        "auth-matrix",
        "A signed push replayed 301 s late and one with a tampered body were refused (401); "
        "the worker held nothing until the genuine push.",
        refused_pushes=len(refused),
        bad_pushes_accepted=sum(1 for status in refused if status != 401),
    )


def _wrong_login(url: str, email: str, n: int, **headers) -> int:
    answer = requests.post(
        f"{url}/login", json={"email": email, "password": f"wrong-{n}"}, headers=headers, timeout=60
    )
    return answer.status_code


def test_parallel_login_guesses_are_throttled(stack, admin_user):
    # Two processes, so the count must hold across them as well as across threads; each with
    # connections enough for all 20 at once (the kernel may hand most to one process), so that
    # none waits for the pool.
    _, url = stack.controller(None, workers=2, DB_POOL_SIZE="20")
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda n: _wrong_login(url, admin_user.email, n), range(60)))
    assert statuses.count(401) == 10, Counter(statuses)
    assert statuses.count(429) == 50, Counter(statuses)
    right = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=30
    )
    assert right.status_code == 429
    assert 1 <= int(right.headers["Retry-After"]) <= 60
    record_attack(
        "parallel-login-guesses",
        "exactly 10 guesses reached the password check (401), the other 50 got 429; the right "
        "password then got 429 with Retry-After",
        checked=statuses.count(401),
        refused_429=statuses.count(429),
        retry_after_s=int(right.headers["Retry-After"]),
    )


def _post_from(source: str, url: str, path: str, body: dict, headers: dict) -> int:
    """POST from a chosen local source address (127.0.0.2 is loopback, yet not 127.0.0.1)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **headers}
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_forged_forwarded_for_is_ignored_from_untrusted_peers(stack, admin_user):
    _, url = stack.controller(None)
    statuses = []
    for n in range(15):
        # A different account each time, so only the per-address limit can stop this.
        statuses.append(
            _post_from(
                "127.0.0.2",
                url,
                "/login",
                {"email": f"guess{n}@example.com", "password": "x"},
                {"X-Forwarded-For": f"198.51.100.{n}"},
            )
        )
    assert statuses == [401] * 10 + [429] * 5, statuses
    seen = set(
        AuditEntry.objects.filter(action=AuditEntry.LOGIN_FAILED).values_list(
            "source_ip", flat=True
        )
    )
    assert seen == {"127.0.0.2"}, seen
    # From the trusted proxy (loopback 127.0.0.1 by default) the header is the client's address.
    assert (
        _post_from(
            "127.0.0.1",
            url,
            "/login",
            {"email": "proxied@example.com", "password": "x"},
            {"X-Forwarded-For": "203.0.113.7"},
        )
        == 401
    )
    assert AuditEntry.objects.filter(actor="proxied@example.com").get().source_ip == "203.0.113.7"
    record_attack(
        "login-guesses-rotating-addresses",
        "the forged addresses were ignored: the 11th attempt from the real address got 429 and "
        "the audit log recorded only the real address; behind the trusted proxy the header "
        "was used",
        refused_429=statuses.count(429),
        audit_addresses=len(seen),
    )


# The pod networks the Kubernetes base trusts as its ingress: a test client on loopback is
# outside them, as a pod or node that reaches a controller pod around the ingress is.
BASE_PROXIES = "10.244.0.0/16,10.42.0.0/16"


def test_forged_forwarded_for_is_ignored_when_sent_around_the_proxy(stack, admin_user):
    # The base used to add NUM_PROXIES=1, which took the address from the header whoever sent
    # it: a controller so configured now refuses to start, naming what replaces it.
    port = free_port()
    refused = subprocess.run(
        manage("run_controller", "--bind", f"127.0.0.1:{port}"),
        env=base_env(
            FORWARDED_ALLOW_IPS=BASE_PROXIES, NUM_PROXIES="1", DATABASE_URL=database_url()
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "FORWARDED_ALLOW_IPS" in refused.stderr, refused.stderr[-2000:]
    _, url = stack.controller(None, FORWARDED_ALLOW_IPS=BASE_PROXIES)
    statuses = [
        _post_from(
            "127.0.0.1",
            url,
            "/login",
            {"email": f"around{n}@example.com", "password": "x"},
            {"X-Forwarded-For": f"198.51.100.{n}"},
        )
        for n in range(12)
    ]
    assert statuses == [401] * 10 + [429] * 2, statuses
    seen = set(
        AuditEntry.objects.filter(action=AuditEntry.LOGIN_FAILED).values_list(
            "source_ip", flat=True
        )
    )
    assert seen == {"127.0.0.1"}, seen
    # From a peer inside a listed network (a CIDR range) the header is the client's address.
    _, proxied = stack.controller(None, FORWARDED_ALLOW_IPS="127.0.0.0/30")
    status = _post_from(
        "127.0.0.2",
        proxied,
        "/login",
        {"email": "behind-proxy@example.com", "password": "x"},
        {"X-Forwarded-For": "203.0.113.9"},
    )
    assert status == 401
    assert AuditEntry.objects.get(actor="behind-proxy@example.com").source_ip == "203.0.113.9"
    record_attack(
        "forged-forwarded-for-behind-proxy",
        "a controller with NUM_PROXIES set refused to start; with the proxies' networks alone "
        "the forged addresses were ignored (the 11th attempt got 429, the audit log has only "
        "the real address); from a peer in a listed CIDR range the header was used",
        num_proxies_start="refused",
        refused_429=statuses.count(429),
        audit_addresses=len(seen),
    )


def test_admin_login_is_throttled(stack, admin_user):
    _, url = stack.controller(None)
    session = requests.Session()

    def attempt(password: str) -> requests.Response:
        form = session.get(f"{url}/admin/login/", timeout=30)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        return session.post(
            f"{url}/admin/login/?next=/admin/",
            data={"username": ADMIN_EMAIL, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{url}/admin/login/"},
            allow_redirects=False,
            timeout=30,
        )

    statuses = [attempt(f"wrong-{n}").status_code for n in range(25)]
    assert statuses == [200] * 10 + [429] * 15, statuses
    right = attempt(ADMIN_PASSWORD)
    assert right.status_code == 429
    assert "Too many failed logins" in right.text
    assert "sessionid" not in session.cookies
    assert session.get(f"{url}/agents", timeout=30).status_code in (401, 403)
    record_attack(
        "admin-login-guesses",
        "the 11th and later wrong passwords got 429, and so did the right one: no session",
        refused_429=statuses.count(429) + 1,
    )


def _exit_of(args: list[str], env: dict) -> tuple[int, str]:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, result.stderr.strip()


def test_published_or_short_secrets_are_refused_in_production(tmp_path):
    published = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    refused = {}
    cases = [
        ("controller", ["run_controller", "--bind", "127.0.0.1:1"], "SECRET_KEY", published),
        ("controller", ["run_controller", "--bind", "127.0.0.1:1"], "SECRET_KEY", "x" * 31),
        ("worker", ["run_worker", "--bind", "127.0.0.1:1"], "INTERNAL_KEY", published),
        ("worker", ["run_worker", "--bind", "127.0.0.1:1"], "INTERNAL_KEY", "short-key"),
        (
            "agent",
            [
                "run_agent",
                "--controller-url",
                "http://127.0.0.1:1",
                "--worker-url",
                "http://127.0.0.1:2",
                "--state-dir",
                str(tmp_path / "agent"),
                "--once",
            ],
            "INTERNAL_KEY",
            published,
        ),
    ]
    for role, args, name, value in cases:
        value = value[name] if isinstance(value, dict) else value
        env = base_env(
            DEBUG="0", VAR_DIR=str(tmp_path), **{"INTERNAL_KEY": INTERNAL_KEY, name: value}
        )
        code, stderr = _exit_of(manage(*args), env)
        assert code == 2, (role, name, code, stderr)
        assert len(stderr.splitlines()) == 1 and name in stderr, (role, stderr)
        refused[f"{role} {name}"] = "exit 2"
    # The fresh .env that `make docker-up` writes passes.
    target = tmp_path / ".env"
    subprocess.run(
        [sys.executable, "deploy/write_env.py", ".env.example", str(target)], cwd=ROOT, check=True
    )
    fresh = dict(line.split("=", 1) for line in target.read_text().splitlines() if "=" in line)
    for name in ("SECRET_KEY", "INTERNAL_KEY", "POSTGRES_PASSWORD", "ADMIN_PASSWORD"):
        assert fresh[name] != published[name] and len(fresh[name]) >= 24, name
    assert weakness("SECRET_KEY", fresh["SECRET_KEY"]) is None
    assert weakness("INTERNAL_KEY", fresh["INTERNAL_KEY"]) is None
    assert target.stat().st_mode & 0o777 == 0o600
    record_attack(
        "published-secrets",
        "each process refused to start (exit 2, one line naming the variable); the .env that "
        "make writes has fresh secrets",
        **refused,
    )


def test_one_refresh_token_used_at_once_rotates_once(stack, admin_user):
    _, url = stack.controller(None, workers=2)
    tokens = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=30
    ).json()

    def use(_):
        return requests.post(
            f"{url}/login/refresh", json={"refresh": tokens["refresh"]}, timeout=60
        )

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(use, range(30)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == 29, statuses
    record_attack(
        "parallel-refresh",
        "exactly one of the 30 got new tokens; 29 got 401",
        succeeded=statuses.count(200),
        refused_401=statuses.count(401),
    )


def test_logout_and_a_new_password_end_sessions(stack, admin_user):
    _, url = stack.controller(None)

    def login() -> dict:
        return requests.post(
            f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=30
        ).json()

    first = login()
    assert (
        requests.post(f"{url}/logout", json={"refresh": first["refresh"]}, timeout=30).status_code
        == 204
    )
    after_logout = requests.post(
        f"{url}/login/refresh", json={"refresh": first["refresh"]}, timeout=30
    ).status_code
    assert after_logout == 401
    second = login()
    bearer = {"Authorization": f"Bearer {second['access']}"}
    assert requests.get(f"{url}/agents", headers=bearer, timeout=30).status_code == 200
    admin_user.set_password("A-different-Password-31")
    admin_user.save()
    old_access = requests.get(f"{url}/agents", headers=bearer, timeout=30).status_code
    old_refresh = requests.post(
        f"{url}/login/refresh", json={"refresh": second["refresh"]}, timeout=30
    ).status_code
    assert (old_access, old_refresh) == (401, 401)
    record_attack(
        "logged-out-and-old-password-tokens",
        "the logged-out refresh token got 401; after the password changed, the access and "
        "refresh tokens issued before got 401",
        logout=204,
        refresh_after_logout=after_logout,
        access_after_password_change=old_access,
        refresh_after_password_change=old_refresh,
    )


def test_an_access_token_is_refused_after_logout(stack, admin_user):
    _, url = stack.controller(None)
    tokens = requests.post(
        f"{url}/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, timeout=30
    ).json()
    refreshed = requests.post(
        f"{url}/login/refresh", json={"refresh": tokens["refresh"]}, timeout=30
    ).json()

    def agents(access: str) -> int:
        bearer = {"Authorization": f"Bearer {access}"}
        return requests.get(f"{url}/agents", headers=bearer, timeout=30).status_code

    assert (agents(tokens["access"]), agents(refreshed["access"])) == (200, 200)
    logout = requests.post(f"{url}/logout", json={"refresh": refreshed["refresh"]}, timeout=30)
    assert logout.status_code == 204
    after = (agents(tokens["access"]), agents(refreshed["access"]))
    assert after == (401, 401), after
    record_attack(
        "access-token-after-logout",
        "both access tokens of the logged-out session got 401 at once, well before they expire",
        access_after_logout=after[0],
        refreshed_access_after_logout=after[1],
    )


def test_a_signed_push_cannot_be_sent_twice(stack):
    _, worker = stack.worker()
    body = json.dumps(config_body(version=2, url="http://a.example/x?token=s3cr3t&page=2")).encode()
    headers = signed_headers(body, INTERNAL_KEY)
    first = requests.post(f"{worker}/config", data=body, headers=headers, timeout=10)
    assert first.status_code == 200, first.text
    # The same bytes again, well inside the 300 s window; and respelled with spaces.
    again = requests.post(f"{worker}/config", data=body, headers=headers, timeout=10)
    respelled = dict(headers, **{"X-Signature": headers["X-Signature"].replace(",", ", ")})
    spaced = requests.post(f"{worker}/config", data=body, headers=respelled, timeout=10)
    assert (again.status_code, spaced.status_code) == (401, 401), (again.text, spaced.text)
    assert "replayed" in again.json()["detail"]
    # GET /config needs no credential: the query's values are masked there.
    shown = requests.get(f"{worker}/config", timeout=10).json()["config_url"]
    assert "s3cr3t" not in shown and shown == "http://a.example/x?token=***&page=***"
    record_attack(
        "replayed-push",
        "the repeat got 401 (also with the header respelled); GET /config showed the URL with "
        "its query values masked",
        replay=again.status_code,
        replay_respelled=spaced.status_code,
        config_url_shown=shown,
    )


def test_the_admin_session_cookie_cannot_issue_registration_tokens(stack, admin_user):
    _, url = stack.controller(None)
    session = requests.Session()
    form = session.get(f"{url}/admin/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    logged_in = session.post(
        f"{url}/admin/login/?next=/admin/",
        data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{url}/admin/login/"},
        allow_redirects=False,
        timeout=30,
    )
    assert logged_in.status_code == 302 and "sessionid" in session.cookies
    # What a cross-site link would send: the cookie, no JWT.
    with_cookie = session.get(f"{url}/agent/admin", timeout=30)
    assert with_cookie.status_code == 401, with_cookie.text
    with_jwt = requests.get(f"{url}/agent/admin", headers=Admin(url).session.headers, timeout=30)
    assert with_jwt.status_code == 200
    record_attack(
        "registration-token-by-cookie",
        "401 with the admin's session cookie alone; the JWT still gets a token",
        cookie=with_cookie.status_code,
        jwt=with_jwt.status_code,
    )


def test_parallel_registrations_against_the_controller_use_each_token_once(stack):
    from concurrent.futures import ThreadPoolExecutor

    from apps.agents.models import Agent

    _, url = stack.controller(None, workers=2)
    tokens = [issue_registration_token()[0] for _ in range(12)]
    contenders = 4

    overloaded = []

    def register(token: str) -> tuple[str, int]:
        # On a busy machine a request may find no pooled connection free in time: that is a
        # 503 with Retry-After, nothing stored, and the client tries again, as the agent does.
        # Any other answer is final.
        for _ in range(10):
            answer = requests.post(
                f"{url}/agent/register",
                json={"name": "parallel"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            if answer.status_code != 503:
                break
            overloaded.append(answer.headers.get("Retry-After"))
            time.sleep(0.5)
        return token, answer.status_code

    # Every contender of every token at once, across both controller processes.
    with ThreadPoolExecutor(max_workers=len(tokens) * contenders) as pool:
        answers = list(pool.map(register, [t for t in tokens for _ in range(contenders)]))
    assert all(retry_after == "5" for retry_after in overloaded), overloaded
    for token in tokens:
        statuses = sorted(status for each, status in answers if each == token)
        assert statuses == [201] + [401] * (contenders - 1), statuses
    assert Agent.objects.filter(name="parallel").count() == len(tokens)
    assert server_errors(url) == 0


def test_an_exhausted_connection_pool_is_a_503_with_retry_after_never_a_500(stack):
    """One pooled connection, held by a registration waiting on a lock: every other request
    that needs the database waits the pool's timeout, then gets 503 with Retry-After and
    nothing stored, in the API (a DRF view) and in the admin (whose session is read by a
    middleware, outside the API's error handling) alike."""
    # A statement timeout longer than the wait below, so only the pool's timeout is at work.
    _, url = stack.controller(None, workers=1, DB_POOL_SIZE="1", DATABASE_STATEMENT_TIMEOUT="25")
    first, *others = [issue_registration_token()[0] for _ in range(4)]
    table = RegistrationToken._meta.db_table

    def register(token: str) -> requests.Response:
        return requests.post(
            f"{url}/agent/register",
            json={"name": "pool"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def admin_page(_) -> requests.Response:
        return requests.get(
            f"{url}/admin/", cookies={"sessionid": "s" * 32}, allow_redirects=False, timeout=60
        )

    def lock_waiters(cursor) -> int:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query "
            "LIKE %s",
            [f"%{table}%"],
        )
        return cursor.fetchone()[0]

    with psycopg.connect(database_url(), autocommit=False) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        with (
            ThreadPoolExecutor(max_workers=8) as pool,
            psycopg.connect(database_url(), autocommit=True) as watcher,
        ):
            blocked = pool.submit(register, first)
            # The controller's only connection is now taken by that registration's wait.
            wait_until(lambda: lock_waiters(watcher.cursor()) == 1, timeout=20)
            refused = [pool.submit(register, token) for token in others]
            refused += [pool.submit(admin_page, n) for n in range(3)]
            answers = [future.result() for future in refused]
            holder.rollback()  # the lock goes; the first registration completes
            assert blocked.result().status_code == 201
    for answer in answers:
        assert answer.status_code == 503, (answer.status_code, answer.text[:200])
        assert answer.headers["Retry-After"] == "5"
        assert answer.json() == {"detail": "The database is unavailable; try again shortly."}
    # Nothing was stored for the refused registrations: their tokens are still unused.
    assert RegistrationToken.objects.filter(used_at__isnull=True).count() == len(others)
    # The controller counted each 503 (the count the other tests use to find 5xx), and nothing
    # else above 499.
    assert server_errors(url) >= len(answers)
    assert server_errors(url, except_status="503") == 0
