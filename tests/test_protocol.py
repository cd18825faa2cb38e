"""protocol/: the one set of config rules the controller, the agent and the worker share."""

import json
import subprocess
import sys

import pytest
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from agent.state import StateDir
from protocol.config import CONFIG_FIELDS, InvalidFields, check_config, valid_config
from protocol.rules import is_http_url
from tests.support.processes import ROOT
from worker.config import parse_push

DJANGO_URLS = URLValidator(schemes=["http", "https"])
VALID = {
    "config_url": "http://upstream.example/task",
    "pooling_interval": 30,
    "version": 3,
    "uuid": "6f1c1c4e-7a55-4d8b-9d8e-0c1b7b2a9e11",
}


def django_says(value: str) -> bool:
    try:
        DJANGO_URLS(value)
    except ValidationError:
        return False
    return True


EDGE_URLS = [
    "http://127.0.0.1:8080/x",
    "http://[::1]:80/",
    "http://[::1:80/",
    "http://[1:2:3:4:5:6:7:8:9]/",
    "http://[fe80::1%25eth0]/",
    "http://localhost",
    "http://localhost.",
    "https://example.com./",
    "http://xn--bcher-kva.example/",
    "http://bücher.example/",
    "http://-bad.example/",
    "http://bad-.example/",
    "http://a." + "b" * 63 + ".example/",
    "http://a." + "b" * 64 + ".example/",
    "http://" + "a." * 126 + "example/",
    "http://user:pass@example.com/",
    "http://example.com:99999/",
    "http://example.com:/",
    "http://example.com/\ttab",
    "http://example.com/ space",
    "ftp://example.com/",
    "HTTP://EXAMPLE.COM/",
    "http:/example.com",
    "http://",
    "http://.example.com",
    "http://256.1.1.1/",
    "http://1.1.1/",
    "//example.com",
    "http://example",
    "http://example.c",
    "",
]


@pytest.mark.parametrize("value", EDGE_URLS)
def test_the_url_rule_answers_as_djangos_url_validator(value):
    assert is_http_url(value) == django_says(value)


# Generating 500 URLs is slow on a busy machine; slow generation is no failure of the rule.
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), urls(), st.from_regex(r"\Ahttps?://[^/]{0,40}/?\Z")))
@example("http://[::ffff:1.2.3.4]/")
def test_the_url_rule_answers_as_djangos_url_validator_for_generated_text(value):
    assert is_http_url(value) == django_says(value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pooling_interval", 5),
        ("pooling_interval", 86401),
        ("pooling_interval", True),
        ("version", 0),
        ("version", 2**63),
        ("uuid", "not-a-uuid"),
        ("config_url", "http://user:pw@upstream.example/"),
        ("config_url", "file:///etc/passwd"),
    ],
)
def test_the_agent_and_the_worker_refuse_the_same_configs(tmp_path, field, value):
    config = {**VALID, field: value}
    with pytest.raises(InvalidFields) as refused:
        check_config(config)
    assert list(refused.value.errors) == [field]
    # The agent refuses it from the controller and from its cache...
    assert not valid_config(config)
    state = StateDir(tmp_path)
    state.config_path.write_text(json.dumps(config))
    assert state.load_config() is None
    # ...and the worker refuses it as a push.
    with pytest.raises(InvalidFields) as pushed:
        parse_push(json.dumps(config).encode())
    assert pushed.value.errors == refused.value.errors


def test_a_valid_config_passes_everywhere(tmp_path):
    assert check_config(VALID) == VALID
    assert valid_config(VALID)
    state = StateDir(tmp_path)
    state.save_config(VALID)
    assert state.load_config() == VALID
    assert CONFIG_FIELDS == ("config_url", "pooling_interval", "version", "uuid")


def test_a_missing_field_is_named():
    with pytest.raises(InvalidFields) as refused:
        check_config({"config_url": VALID["config_url"]})
    assert refused.value.errors == {
        "pooling_interval": ["This field is required."],
        "version": ["This field is required."],
        "uuid": ["This field is required."],
    }


@pytest.mark.parametrize("package", ["protocol", "agent", "worker"])
def test_the_shared_packages_load_without_django_or_the_apps(package):
    modules = {
        "protocol": "protocol.rules, protocol.config, protocol.signing, protocol.settings, "
        "protocol.cli, protocol.logs, protocol.config_file",
        "agent": "agent.command, agent.daemon, agent.client, agent.state, agent.metrics",
        "worker": "worker.command, worker.app, worker.config, worker.upstream, worker.server",
    }[package]
    code = (
        f"import sys, {modules}; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('django', 'apps')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
