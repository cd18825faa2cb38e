"""The lost-update guard: GET /config/admin sends an ETag, a change with a stale If-Match is 412."""

import pytest

from apps.audit.models import AuditEntry
from apps.configs.models import ConfigVersion

pytestmark = pytest.mark.django_db

URL = "http://upstream.example/a"


def test_get_sends_the_version_as_etag(admin_api, publish):
    publish(URL, 30)
    publish(URL + "b", 30)
    response = admin_api.get("/config/admin")
    assert response.status_code == 200
    assert response["ETag"] == '"2"'


def test_post_with_the_current_etag_is_stored(admin_api, publish):
    publish(URL, 30)
    response = admin_api.post(
        "/config/admin",
        {"config_url": URL + "x", "pooling_interval": 30},
        "json",
        HTTP_IF_MATCH='"1"',
    )
    assert response.status_code == 201
    assert response.json()["version"] == 2
    assert response["ETag"] == '"2"'


@pytest.mark.parametrize("method", ["post", "put"])
@pytest.mark.parametrize("if_match", ['"1"', '"3"', "1", 'W/"x"', "garbage"])
def test_a_stale_or_wrong_if_match_is_412_and_stores_nothing(admin_api, publish, method, if_match):
    publish(URL, 30)
    publish(URL + "b", 30)
    audited = AuditEntry.objects.count()
    response = getattr(admin_api, method)(
        "/config/admin",
        {"config_url": URL + "c", "pooling_interval": 60},
        "json",
        HTTP_IF_MATCH=if_match,
    )
    assert response.status_code == 412
    body = response.json()
    assert body["current_version"] == 2
    assert "detail" in body
    assert ConfigVersion.objects.count() == 2
    assert AuditEntry.objects.count() == audited


def test_put_with_a_matching_etag_in_a_list_or_star_goes_through(admin_api, publish):
    publish(URL, 30)
    response = admin_api.put(
        "/config/admin", {"pooling_interval": 45}, "json", HTTP_IF_MATCH='"9", "1"'
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2
    response = admin_api.put("/config/admin", {"pooling_interval": 50}, "json", HTTP_IF_MATCH="*")
    assert response.status_code == 200
    assert response.json()["version"] == 3


def test_two_editors_from_one_read_only_the_first_wins(admin_api, publish):
    publish(URL, 30)
    etag = admin_api.get("/config/admin")["ETag"]
    first = admin_api.put("/config/admin", {"pooling_interval": 40}, "json", HTTP_IF_MATCH=etag)
    second = admin_api.put("/config/admin", {"config_url": URL + "z"}, "json", HTTP_IF_MATCH=etag)
    assert first.status_code == 200
    assert second.status_code == 412
    assert second.json()["current_version"] == 2
    assert ConfigVersion.objects.get(version=2).config_url == URL


def test_without_if_match_a_change_goes_through_as_before(admin_api, publish):
    publish(URL, 30)
    response = admin_api.put("/config/admin", {"pooling_interval": 40}, "json")
    assert response.status_code == 200
    assert response.json()["version"] == 2


def test_star_with_no_config_yet_is_412_and_stores_nothing(admin_api):
    # "*" means "whatever is there": with nothing published yet, there is nothing to match.
    response = admin_api.post(
        "/config/admin", {"config_url": URL, "pooling_interval": 30}, "json", HTTP_IF_MATCH="*"
    )
    assert response.status_code == 412, response.content
    assert response.json()["current_version"] == 0
    assert not ConfigVersion.objects.exists()
    assert not AuditEntry.objects.filter(target__startswith="config").exists()
