import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from apps.configs.models import ConfigVersion

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/task"
GOOD = {"config_url": URL, "pooling_interval": 30}


def test_get_before_any_config_is_404(admin_api):
    response = admin_api.get("/config/admin")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_post_creates_version_one_and_get_returns_it(admin_api):
    response = admin_api.post("/config/admin", GOOD, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["version"] == 1
    assert body["config_url"] == URL
    assert body["pooling_interval"] == 30
    assert body["created_by"] == "admin@example.com"
    assert set(body) == {
        "uuid",
        "version",
        "config_url",
        "pooling_interval",
        "created_at",
        "created_by",
    }
    assert admin_api.get("/config/admin").json() == body


def test_posting_identical_content_makes_no_new_version(admin_api):
    first = admin_api.post("/config/admin", GOOD, format="json").json()
    again = admin_api.post("/config/admin", GOOD, format="json")
    assert again.status_code == 200
    assert again.json() == first
    assert ConfigVersion.objects.count() == 1


def test_post_needs_both_fields(admin_api):
    response = admin_api.post("/config/admin", {"config_url": URL}, format="json")
    assert response.status_code == 400
    assert "pooling_interval" in response.json()
    assert ConfigVersion.objects.count() == 0


BAD_URLS = [
    "not a url",
    "ftp://example.com/x",
    "/relative/path",
    "http://user:pass@example.com/",
    "http://" + "a" * 2040 + ".com/",
    "",
    None,
    123,
    ["http://example.com"],
    "javascript:alert(1)",
]
BAD_INTERVALS = ["45", 45.0, 45.5, True, False, None, 29, 86401, -30, 0, [30], {"s": 30}]


@pytest.mark.parametrize("config_url", BAD_URLS)
def test_bad_config_url_is_400_naming_the_field_and_stores_nothing(admin_api, config_url):
    response = admin_api.post(
        "/config/admin", {"config_url": config_url, "pooling_interval": 30}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["config_url"]
    assert ConfigVersion.objects.count() == 0


@pytest.mark.parametrize("interval", BAD_INTERVALS)
def test_bad_pooling_interval_is_400_naming_the_field_and_stores_nothing(admin_api, interval):
    response = admin_api.post(
        "/config/admin", {"config_url": URL, "pooling_interval": interval}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["pooling_interval"]
    assert ConfigVersion.objects.count() == 0


@pytest.mark.parametrize("interval", [30, 86400])
def test_interval_bounds_are_inclusive(admin_api, interval):
    response = admin_api.post(
        "/config/admin", {"config_url": URL, "pooling_interval": interval}, format="json"
    )
    assert response.status_code == 201


def test_non_object_json_body_is_400(admin_api):
    assert admin_api.post("/config/admin", [1, 2], format="json").status_code == 400
    assert (
        admin_api.put("/config/admin", "null", content_type="application/json").status_code == 400
    )
    assert ConfigVersion.objects.count() == 0


def test_put_before_any_config_is_404(admin_api):
    response = admin_api.put("/config/admin", {"pooling_interval": 60}, format="json")
    assert response.status_code == 404
    assert ConfigVersion.objects.count() == 0


def test_put_changes_a_subset_and_raises_the_version(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    response = admin_api.put("/config/admin", {"pooling_interval": 60}, format="json")
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert response.json()["config_url"] == URL
    assert response.json()["pooling_interval"] == 60
    old = ConfigVersion.objects.get(version=1)
    assert old.pooling_interval == 30  # history is never edited


def test_put_with_unchanged_content_keeps_the_version(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    response = admin_api.put("/config/admin", {"config_url": URL}, format="json")
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert admin_api.put("/config/admin", {}, format="json").json()["version"] == 1
    assert ConfigVersion.objects.count() == 1


def test_put_with_bad_value_is_400_and_stores_nothing(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    response = admin_api.put("/config/admin", {"pooling_interval": "60"}, format="json")
    assert response.status_code == 400
    assert "pooling_interval" in response.json()
    assert ConfigVersion.objects.count() == 1


@pytest.mark.parametrize("method", ["get", "post", "put"])
def test_config_admin_needs_an_admin_jwt(api, agent_api, method):
    assert getattr(api, method)("/config/admin", GOOD, format="json").status_code == 401
    assert getattr(agent_api, method)("/config/admin", GOOD, format="json").status_code == 401
    api.credentials(HTTP_AUTHORIZATION="Bearer garbage")
    assert getattr(api, method)("/config/admin", GOOD, format="json").status_code == 401
    assert ConfigVersion.objects.count() == 0


def test_non_staff_user_is_refused(django_user_model):
    django_user_model.objects.create_user(email="user@example.com", password="Pass-word-123")
    client = APIClient()
    token = client.post(
        "/login", {"email": "user@example.com", "password": "Pass-word-123"}, format="json"
    ).json()["access"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.post("/config/admin", GOOD, format="json").status_code == 403
    assert ConfigVersion.objects.count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_changes_get_consecutive_versions_without_gaps_or_duplicates(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    token = admin_api._credentials["HTTP_AUTHORIZATION"]
    writers = 24
    barrier = threading.Barrier(writers)
    statuses = []

    def change(i: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=token)
        barrier.wait()
        try:
            response = client.put("/config/admin", {"pooling_interval": 100 + i}, format="json")
            statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=change, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * writers
    versions = sorted(ConfigVersion.objects.values_list("version", flat=True))
    assert versions == list(range(1, writers + 2))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_creations_make_one_version_each():
    from apps.configs.actions import publish_config

    writers = 12
    barrier = threading.Barrier(writers)
    errors = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            publish_config(config_url=f"{URL}/{i}", pooling_interval=30)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(ConfigVersion.objects.values_list("version", flat=True)) == list(
        range(1, writers + 1)
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_changes_of_different_fields_both_survive(admin_api):
    admin_api.post("/config/admin", GOOD, format="json")
    token = admin_api._credentials["HTTP_AUTHORIZATION"]
    for round_ in range(5):
        barrier = threading.Barrier(2)
        interval, url = 200 + round_, f"{URL}/{round_}"
        statuses: list[int] = []

        def change(body: dict, barrier: threading.Barrier = barrier, statuses=statuses) -> None:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=token)
            barrier.wait()
            try:
                # Asserted in the main thread: an assertion here would only be a warning.
                statuses.append(client.put("/config/admin", body, format="json").status_code)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=change, args=({"pooling_interval": interval},)),
            threading.Thread(target=change, args=({"config_url": url},)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        current = ConfigVersion.objects.order_by("-version").first()
        assert (current.config_url, current.pooling_interval) == (url, interval)
