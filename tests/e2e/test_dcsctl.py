"""dcsctl, the command line for pipelines, against a real controller with API tokens: changes in
the token's scope, one line and exit 1 for a refusal, exit 2 for bad usage, `rollout --wait`
following a rollout to its end, promotion, and the login file."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apps.accounts.api_tokens import issue_api_token
from apps.accounts.models import User
from apps.changes.models import ChangeRequest
from apps.configs.actions import halt_rollout, publish_config
from apps.rollouts.models import Rollout
from apps.scopes.models import Environment
from apps.scopes.services import get_scope
from tests.support.scopes import make_two_by_two, user_with

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
URL = "http://upstream.example/a"


def dcsctl(*args: str, url: str | None = None, token: str | None = None, home=None):
    """Run the command as a pipeline would; (exit status, stdout, stderr)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DCS_")}
    if url:
        env["DCS_URL"] = url
    if token:
        env["DCS_TOKEN"] = token
    if home is not None:
        env["XDG_CONFIG_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "dcsctl", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def fleet(stack):
    make_two_by_two()
    for environment in ("staging", "production"):
        scope = get_scope("payments", environment)
        publish_config(scope_id=scope.pk, config_url=URL, pooling_interval=30)
    _, url = stack.controller(None)
    return url


def token_for(role: str, application=None, environment=None) -> str:
    user = user_with(role, application, environment)
    scope_objects = {
        "application": get_scope("payments", "staging").application if application else None,
        "environment": Environment.objects.get(name=environment) if environment else None,
    }
    return issue_api_token(creator=user, user=user, name="ci", role=role, **scope_objects)[1]


def test_the_command_imports_no_django():
    probe = "import sys, dcsctl.main; print(any(m.startswith('django') for m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_a_scoped_token_changes_its_scope_and_is_refused_elsewhere_in_one_line(fleet):
    token = token_for("editor", "payments", "staging")
    code, out, err = dcsctl(
        "set", "payments/staging", "pooling_interval=45", url=fleet, token=token
    )
    assert (code, out.strip(), err) == (0, "payments/staging: v2 published", "")
    code, out, _ = dcsctl("get", "payments/staging", "--output", "json", url=fleet, token=token)
    assert code == 0 and json.loads(out)["pooling_interval"] == 45
    code, out, err = dcsctl(
        "set", "payments/production", "pooling_interval=45", url=fleet, token=token
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "403" in err and "Traceback" not in err
    code, out, _ = dcsctl("history", "payments/staging", url=fleet, token=token)
    assert code == 0 and out.splitlines()[0].startswith("v2 ")


@pytest.mark.parametrize(
    "args",
    [
        ("set", "payments"),
        ("set", "payments/staging", "colour=blue"),
        ("rollout", "status", "payments/staging", "--wait", "--timeout", "-1"),
        ("frobnicate",),
        (),
    ],
)
def test_bad_usage_exits_2(fleet, args):
    code, _, err = dcsctl(*args, url=fleet, token="dcs_unused")
    assert code == 2 and "Traceback" not in err


def test_a_revoked_or_unknown_token_is_refused_at_once(fleet):
    token = token_for("viewer", "payments", None)
    assert dcsctl("get", "payments/staging", url=fleet, token=token)[0] == 0
    from apps.accounts.models import ApiToken

    ApiToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    code, _, err = dcsctl("get", "payments/staging", url=fleet, token=token)
    assert code == 1 and "401" in err
    code, _, err = dcsctl("get", "payments/staging", url=fleet)
    assert code == 2 and "no API token" in err


def test_rollout_wait_exits_0_when_completed_and_1_when_halted(fleet, tmp_path):
    token = token_for("operator", "payments", "production")
    editor = token_for("editor", "payments", "production")
    plan = tmp_path / "plan.yaml"
    plan.write_text("waves: [100]\n")
    code, out, _ = dcsctl(
        "set",
        "payments/production",
        f"config_url={URL}/2",
        "--rollout",
        str(plan),
        url=fleet,
        token=editor,
    )
    assert code == 0, out
    code, out, _ = dcsctl(
        "rollout",
        "promote",
        "payments/production",
        "--wait",
        "--timeout",
        "20",
        url=fleet,
        token=token,
    )
    assert code == 0 and "completed" in out.splitlines()[-1]
    code, out, _ = dcsctl(
        "set",
        "payments/production",
        f"config_url={URL}/3",
        "--rollout",
        str(plan),
        url=fleet,
        token=editor,
    )
    assert code == 0, out
    numbers = {"reason": "failure rate 0.90 over 30 hits", "hits": {}, "previous_hits": {}}
    halt_rollout(Rollout.objects.get(version=3), numbers)
    code, out, _ = dcsctl(
        "rollout",
        "status",
        "payments/production",
        "--wait",
        "--timeout",
        "10",
        url=fleet,
        token=token,
    )
    assert code == 1 and "halted" in out


def test_promote_shows_the_difference_and_follows_the_target_s_approvals(fleet):
    root = User.objects.create_superuser(email="root@example.com", password=None)
    token = issue_api_token(creator=root, user=root, name="ci", role="editor")[1]
    assert (
        dcsctl("set", "payments/staging", f"config_url={URL}/new", url=fleet, token=token)[0] == 0
    )
    code, out, err = dcsctl(
        "promote", "payments", "--from", "staging", "--to", "production", url=fleet, token=token
    )
    assert code == 0, err
    assert f"config_url: {URL} -> {URL}/new" in out and "payments/production: v2 published" in out
    Environment.objects.filter(name="production").update(approvals_required=1)
    dcsctl("set", "payments/staging", "pooling_interval=90", url=fleet, token=token)
    code, out, _ = dcsctl(
        "promote", "payments", "--from", "staging", "--to", "production", url=fleet, token=token
    )
    assert code == 0 and f"change request #{ChangeRequest.objects.get().pk} opened" in out


def test_login_keeps_the_url_and_token_for_this_user_only(fleet, tmp_path):
    token = token_for("viewer", "payments", None)
    code, out, _ = dcsctl("--url", fleet, "--token", token, "login", home=tmp_path)
    assert code == 0, out
    kept = tmp_path / "dcs" / "config.yaml"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    code, out, _ = dcsctl("get", "payments/staging", home=tmp_path)
    assert code == 0 and out.startswith("payments/staging v1")
    assert dcsctl("--url", fleet, "--token", "dcs_nope", "login", home=tmp_path / "other")[0] == 1
    assert not (tmp_path / "other" / "dcs" / "config.yaml").exists()


def test_export_edit_diff_apply_and_apply_again_changes_nothing(fleet, tmp_path):
    root = User.objects.create_superuser(email="root@example.com", password=None)
    token = issue_api_token(creator=root, user=root, name="ci", role="editor")[1]
    code, exported, _ = dcsctl("export", url=fleet, token=token)
    assert code == 0
    document = yaml.safe_load(exported)
    assert [env["name"] for env in document["environments"]] == ["staging", "production"]
    payments = next(app for app in document["applications"] if app["name"] == "payments")
    assert payments["environments"]["staging"] == {
        "version": 1,
        "config_url": URL,
        "pooling_interval": 30,
    }
    payments["environments"]["staging"]["pooling_interval"] = 60
    edited = tmp_path / "fleet.yaml"
    edited.write_text("# reviewed in a pull request\n" + yaml.safe_dump(document, sort_keys=False))
    code, out, _ = dcsctl("diff", "-f", str(edited), url=fleet, token=token)
    assert (code, out) == (1, "~ payments/staging pooling_interval: 30 -> 60\n")
    code, out, _ = dcsctl("diff", "-f", str(edited), "--output", "json", url=fleet, token=token)
    (change,) = json.loads(out)
    assert code == 1 and (change["method"], change["body"]) == ("PUT", {"pooling_interval": 60})
    code, out, _ = dcsctl("export", "payments/staging", "--output", "json", url=fleet, token=token)
    exported_json = json.loads(out)["applications"][0]["environments"]["staging"]
    assert code == 0 and exported_json["pooling_interval"] == 30
    code, out, err = dcsctl("apply", "-f", str(edited), url=fleet, token=token)
    assert code == 0 and "payments/staging: v2 published" in out, err
    assert dcsctl("diff", "-f", str(edited), url=fleet, token=token)[:2] == (0, "")
    code, out, _ = dcsctl("apply", "-f", str(edited), url=fleet, token=token)
    assert (code, out) == (0, "nothing to change\n")
    assert dcsctl("get", "payments/staging", url=fleet, token=token)[1].startswith(
        "payments/staging v2:"
    )
    # Production needs an approver: apply opens a change request and says where.
    Environment.objects.filter(name="production").update(approvals_required=1)
    # (The file says so too: an environment's rules are a superuser's, not this token's.)
    document["environments"][1]["approvals_required"] = 1
    payments["environments"]["production"]["config_url"] = URL + "/next"
    edited.write_text(yaml.safe_dump(document, sort_keys=False))
    code, out, _ = dcsctl("apply", "-f", str(edited), url=fleet, token=token)
    assert code == 0
    change = ChangeRequest.objects.get()
    assert f"{fleet}/apps/payments/envs/production/config/admin/changes/{change.pk}" in out
    assert dcsctl("get", "payments/production", url=fleet, token=token)[1].startswith(
        "payments/production v1:"
    )


def test_diff_exits_2_on_a_bad_file_and_apply_refuses_what_the_token_may_not(fleet, tmp_path):
    token = token_for("editor", "payments", "staging")
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: {payments: 1}\n")
    code, _, err = dcsctl("diff", "-f", str(bad), url=fleet, token=token)
    assert code == 2 and "a list of mappings" in err
    elsewhere = tmp_path / "production.yaml"
    elsewhere.write_text(
        "applications:\n"
        "  - name: payments\n"
        "    environments:\n"
        "      production: {pooling_interval: 90}\n"
    )
    code, out, err = dcsctl("apply", "-f", str(elsewhere), url=fleet, token=token)
    assert code == 1 and "403" in err and err.count("\n") == 1


def test_apply_refuses_a_scope_changed_since_its_diff_was_read(fleet):
    from dcsctl.client import Controller, Failed
    from dcsctl.fleet import apply_step, plan_steps

    token = token_for("editor", "payments", "staging")
    controller = Controller(fleet, token)
    desired = {
        "applications": [
            {"name": "payments", "environments": {"staging": {"pooling_interval": 60}}}
        ]
    }
    (step,) = plan_steps(controller, desired)
    # Someone changes the scope between the diff and the apply.
    assert dcsctl("set", "payments/staging", "pooling_interval=90", url=fleet, token=token)[0] == 0
    with pytest.raises(Failed, match="payments/staging changed on the controller since"):
        apply_step(controller, step)
    code, out, _ = dcsctl("get", "payments/staging", url=fleet, token=token)
    assert "pooling_interval=90" in out


def test_promote_a_named_version_shows_that_version_s_difference(fleet):
    root = User.objects.create_superuser(email="root@example.com", password=None)
    token = issue_api_token(creator=root, user=root, name="ci", role="editor")[1]
    dcsctl("set", "payments/staging", f"config_url={URL}/v2", url=fleet, token=token)
    dcsctl("set", "payments/staging", f"config_url={URL}/v3", url=fleet, token=token)
    code, out, err = dcsctl(
        "promote",
        "payments",
        "--from",
        "staging",
        "--to",
        "production",
        "--version",
        "2",
        url=fleet,
        token=token,
    )
    assert code == 0, err
    assert f"config_url: {URL} -> {URL}/v2" in out
    code, out, _ = dcsctl("get", "payments/production", url=fleet, token=token)
    assert f"config_url={URL}/v2 " in out
    code, _, err = dcsctl(
        "promote",
        "payments",
        "--from",
        "staging",
        "--to",
        "production",
        "--version",
        "9",
        url=fleet,
        token=token,
    )
    assert code == 1 and "no version 9" in err


def test_a_scoped_token_exports_and_diffs_its_part_of_the_fleet(fleet, tmp_path):
    token = token_for("editor", "payments", "staging")
    code, out, err = dcsctl("export", url=fleet, token=token)
    assert code == 0
    payments = next(a for a in yaml.safe_load(out)["applications"] if a["name"] == "payments")
    assert set(payments["environments"]) == {"staging"}
    assert "not readable with this token: " in err and "payments/production" in err
    mine = tmp_path / "mine.yaml"
    mine.write_text(out)
    assert dcsctl("diff", "-f", str(mine), url=fleet, token=token)[:2] == (0, "")


def test_apply_wait_follows_the_rollout_of_a_plan_given_in_the_file(fleet, tmp_path):
    token = token_for("editor", "payments", "staging")
    document = tmp_path / "fleet.yaml"
    document.write_text(
        "applications:\n"
        "  - name: payments\n"
        "    environments:\n"
        "      staging:\n"
        f"        config_url: {URL}/staged\n"
        "        rollout: {waves: [100], bake_seconds: 0}\n"
    )
    code, out, err = dcsctl("diff", "-f", str(document), url=fleet, token=token)
    assert code == 1 and "(rolled out in stages)" in out
    code, out, err = dcsctl(
        "apply", "-f", str(document), "--wait", "--timeout", "30", url=fleet, token=token
    )
    assert code == 0, out + err
    assert "completed" in out.splitlines()[-1]
    rollout = Rollout.objects.get(scope__environment__name="staging")
    assert (rollout.version, rollout.state) == (2, "completed")
