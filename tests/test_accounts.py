import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from apps.accounts.models import User
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = pytest.mark.django_db


def login(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD, **extra):
    return client.post("/login", {"email": email, "password": password}, format="json", **extra)


def test_login_returns_tokens_with_type_and_lifetime(api, admin_user):
    response = login(api)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "access",
        "refresh",
        "token_type",
        "expires_in",
        "roles",
        "grants",
        "superuser",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 15 * 60
    assert body["roles"] == ["viewer", "editor", "approver", "operator"]
    assert body["superuser"] is True


def test_login_email_is_case_insensitive(api, admin_user):
    assert login(api, email=ADMIN_EMAIL.upper()).status_code == 200


def test_wrong_password_is_401_like_unknown_email(api, admin_user):
    wrong = login(api, password="not-the-password")
    unknown = login(api, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


@pytest.mark.parametrize(
    "body",
    [{}, {"email": ADMIN_EMAIL}, {"password": "x"}, {"email": ADMIN_EMAIL, "password": ["x"]}],
)
def test_malformed_login_is_400(api, admin_user, body):
    assert api.post("/login", body, format="json").status_code == 400


def test_login_with_non_json_body_is_400(api, admin_user):
    response = api.post("/login", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


@pytest.mark.bcrypt
def test_passwords_are_stored_with_bcrypt(admin_user):
    assert User.objects.get(email=ADMIN_EMAIL).password.startswith("bcrypt_sha256$")


def test_repeated_failures_are_throttled_and_forged_forwarded_for_does_not_help(
    api, admin_user, settings
):
    for _ in range(10):
        assert login(api, password="wrong").status_code == 401
    refused = login(api, password="wrong")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    forged = login(api, password="wrong", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forged.status_code == 429
    # Even the right password waits until the window passes: a guesser learns nothing.
    assert login(api).status_code == 429
    # The account is locked from every address, so rotating addresses does not help ...
    assert login(APIClient(), REMOTE_ADDR="10.1.1.1").status_code == 429
    # ... and this address is locked for every account.
    User.objects.create_user(email="other@example.com", password=ADMIN_PASSWORD)
    assert login(api, email="other@example.com").status_code == 429
    assert login(APIClient(), email="other@example.com", REMOTE_ADDR="10.1.1.2").status_code == 200


def test_failures_spread_over_addresses_are_throttled_per_account(api, admin_user):
    for n in range(10):
        assert login(APIClient(), password="wrong", REMOTE_ADDR=f"10.2.0.{n}").status_code == 401
    assert login(APIClient(), REMOTE_ADDR="10.2.0.99").status_code == 429


def test_the_throttle_window_ends(api, admin_user, settings):
    from apps.accounts.models import LoginAttempts

    for _ in range(11):
        login(api, password="wrong")
    assert login(api).status_code == 429
    LoginAttempts.objects.update(window_ends=0)
    assert login(api).status_code == 200


def test_admin_login_page_shares_the_throttle(client, admin_user):
    for _ in range(10):
        page = client.post(
            "/admin/login/", {"username": ADMIN_EMAIL, "password": "wrong"}, REMOTE_ADDR="10.3.0.1"
        )
        assert page.status_code == 200  # the form again, with an error
    refused = client.post("/admin/login/", {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert int(refused["Retry-After"]) >= 1
    assert "_auth_user_id" not in client.session
    # The API's door is the same door.
    assert login(APIClient()).status_code == 429


def test_successful_logins_are_not_throttled(api, admin_user):
    for _ in range(15):
        assert login(api).status_code == 200


def test_refresh_rotates_and_the_old_refresh_token_is_refused(api, admin_user):
    first = login(api).json()["refresh"]
    response = api.post("/login/refresh", {"refresh": first}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["access"] and body["refresh"] and body["refresh"] != first
    replay = api.post("/login/refresh", {"refresh": first}, format="json")
    assert replay.status_code == 401
    assert (
        api.post("/login/refresh", {"refresh": body["refresh"]}, format="json").status_code == 200
    )


def test_logout_ends_the_refresh_token(api, admin_user):
    refresh = login(api).json()["refresh"]
    assert api.post("/logout", {"refresh": refresh}, format="json").status_code == 204
    assert api.post("/login/refresh", {"refresh": refresh}, format="json").status_code == 401
    assert api.post("/logout", {"refresh": refresh}, format="json").status_code == 401
    assert api.post("/logout", {"refresh": "garbage"}, format="json").status_code == 401
    assert api.post("/logout", {}, format="json").status_code == 400


def test_logout_ends_the_access_tokens_of_its_session(api, admin_user):
    first = login(api).json()
    # A token refreshed within the session belongs to it too.
    refreshed = api.post("/login/refresh", {"refresh": first["refresh"]}, format="json").json()
    other = login(APIClient()).json()
    for access in (first["access"], refreshed["access"], other["access"]):
        assert api.get("/agents", HTTP_AUTHORIZATION=f"Bearer {access}").status_code == 200
    assert api.post("/logout", {"refresh": refreshed["refresh"]}, format="json").status_code == 204
    for access in (first["access"], refreshed["access"]):
        refused = api.get("/agents", HTTP_AUTHORIZATION=f"Bearer {access}")
        assert refused.status_code == 401, refused.content
    # Another login's session is not this one.
    assert api.get("/agents", HTTP_AUTHORIZATION=f"Bearer {other['access']}").status_code == 200


def test_a_password_change_ends_every_token_issued_before(api, admin_user):
    before = login(api).json()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {before['access']}")
    assert api.get("/agents").status_code == 200
    user = User.objects.get(email=ADMIN_EMAIL)
    user.set_password("A-new-Password-42")
    user.save()
    assert api.get("/agents").status_code == 401
    assert (
        api.post("/login/refresh", {"refresh": before["refresh"]}, format="json").status_code == 401
    )
    after = login(APIClient(), password="A-new-Password-42").json()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {after['access']}")
    assert api.get("/agents").status_code == 200


def test_changepassword_command_ends_tokens(api, admin_user, monkeypatch):
    access = login(api).json()["access"]
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "Another-Password-77")
    call_command("changepassword", ADMIN_EMAIL)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    assert api.get("/agents").status_code == 401


def test_refresh_with_garbage_is_401(api):
    assert api.post("/login/refresh", {"refresh": "garbage"}, format="json").status_code == 401


def test_seed_admin_is_idempotent_and_warns_about_defaults(capsys):
    call_command("seed_admin", allow_default_password=True)
    first = capsys.readouterr()
    assert "Created admin admin@distributed-system.com" in first.out
    assert "WARNING" in first.err
    call_command("seed_admin", allow_default_password=True)
    assert "already exists; nothing changed" in capsys.readouterr().out
    admin = User.objects.get()
    assert admin.is_staff and admin.is_superuser
    assert admin.check_password("Admin123!@#")


def test_seed_admin_refuses_the_default_and_weak_passwords_with_debug_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="published default"):
        call_command("seed_admin")
    with pytest.raises(CommandError, match="too weak"):
        call_command("seed_admin", password="password")
    assert not User.objects.exists()
    call_command("seed_admin", password="Admin123!@#", allow_default_password=True)
    assert User.objects.get().check_password("Admin123!@#")


def test_seed_admin_takes_the_default_with_debug_on(settings):
    settings.DEBUG = True
    call_command("seed_admin")
    assert User.objects.get().check_password("Admin123!@#")


def test_seed_admin_takes_email_and_password_flags(capsys):
    call_command("seed_admin", email="Ops@Example.com", password="S3cure-pass-phrase")
    user = User.objects.get()
    assert user.email == "ops@example.com"
    assert user.check_password("S3cure-pass-phrase")
    assert "WARNING" not in capsys.readouterr().err


def test_seeded_admin_can_log_in(api):
    call_command("seed_admin", allow_default_password=True)
    response = login(api, email="admin@distributed-system.com", password="Admin123!@#")
    assert response.status_code == 200


@pytest.mark.postgres  # SQLite's shared in-memory test database locks out parallel writers
@pytest.mark.django_db(transaction=True)
def test_parallel_attempts_are_each_counted_once(settings):
    """Of many attempts at once, exactly LOGIN_FAILURE_LIMIT may go on to the password check:
    each is counted in one statement, so none reads a count another is about to raise."""
    import threading

    from django.db import connection

    from apps.accounts.models import LoginAttempts
    from apps.accounts.services import reserve_login

    subjects = ["account:parallel@example.com"]
    contenders = 3 * settings.LOGIN_FAILURE_LIMIT
    start = threading.Barrier(contenders)
    waits, errors = [], []

    def attempt() -> None:
        try:
            start.wait(timeout=30)
            waits.append(reserve_login(subjects))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert waits.count(None) == settings.LOGIN_FAILURE_LIMIT
    # The refused ones gave their count back; the ones let through keep theirs until they
    # succeed.
    stored = LoginAttempts.objects.get(subject=subjects[0]).attempts
    assert stored == settings.LOGIN_FAILURE_LIMIT


def test_an_attempt_is_counted_and_read_in_one_statement(settings, monkeypatch):
    """What keeps the count exact under concurrency on any database: the statement that adds
    the attempt is the one that returns the count, so no other process can come between a
    read and a write."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.accounts import services
    from apps.accounts.models import LoginAttempts
    from apps.accounts.services import reserve_login

    monkeypatch.setattr(services, "_PURGE_CHANCE", 0)  # the occasional clean-up is not counting
    subjects = ["account:one@example.com", "ip:10.9.9.9"]
    for expected in range(1, settings.LOGIN_FAILURE_LIMIT + 1):
        with CaptureQueriesContext(connection) as queries:
            assert reserve_login(subjects) is None
        writes = [q["sql"] for q in queries if "login_attempts" in q["sql"]]
        assert len(writes) == len(subjects), writes
        for sql in writes:
            assert sql.lstrip().upper().startswith("INSERT INTO"), sql
            assert "ON CONFLICT" in sql and "RETURNING" in sql, sql
        counts = LoginAttempts.objects.filter(subject__in=subjects).values_list("attempts")
        assert sorted(counts) == [(expected,), (expected,)]
    assert reserve_login(subjects) is not None
