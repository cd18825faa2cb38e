"""The fleet as one YAML document: `export` writes it, `diff` says what `apply` would change, and
`apply` changes it through the same API calls as a person would (a change request where the
environment needs approvals, its default rollout plan, If-Match against what the diff read).

    environments:            # in their order; the rules of each (a superuser's to change)
      - name: production
        order: 0
        approvals_required: 1
        default_rollout: {waves: [25, 100], bake_seconds: 600}
    applications:            # by name; each one's configuration in each environment
      - name: payments
        description: Cards
        environments:
          production: {config_url: https://api.example/v1, pooling_interval: 30}

Only what the document names is compared: an application or environment it leaves out is left
as it is, and nothing is ever deleted. `version` under a scope, which export writes, is for the
reader; apply ignores it. `rollout` under a scope is the plan its change goes out with."""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from dcsctl.client import Controller, Failed

POLICY = ("order", "approvals_required", "default_rollout")
CONTENT = ("config_url", "pooling_interval")


@dataclass
class Step:
    """One change apply makes: a line for the diff and the call that makes it."""

    line: str
    method: str
    path: str
    body: dict
    headers: dict = field(default_factory=dict)
    scope: str | None = None


def read_live(controller: Controller, only: str | None = None) -> dict:
    """The controller's fleet as export writes it (one application, or one scope, with `only`)."""
    application_name, _, environment_name = (only or "").partition("/")
    environments = controller.listed("/envs")
    applications = controller.listed("/apps")
    skipped: list[str] = []
    fleet: dict = {
        "environments": [
            {"name": env["name"], **{key: env[key] for key in POLICY}} for env in environments
        ],
        "applications": [],
    }
    for application in applications:
        if application_name and application["name"] != application_name:
            continue
        scopes = {}
        for env in environments:
            if environment_name and env["name"] != environment_name:
                continue
            try:
                current = current_config(controller, application["name"], env["name"])
            except Failed as exc:
                if exc.http_status != 403:
                    raise
                skipped.append(f"{application['name']}/{env['name']}")
                continue
            if current is not None:
                scopes[env["name"]] = current
        fleet["applications"].append(
            {
                "name": application["name"],
                "description": application["description"],
                "environments": scopes,
            }
        )
    if application_name and not fleet["applications"]:
        raise Failed(f"no application {application_name!r}")
    if skipped:
        # The document holds what the token may read; say what it leaves out, on stderr.
        print(
            f"dcsctl: left out, not readable with this token: {', '.join(skipped)}", file=sys.stderr
        )
    return fleet


def prefix(application: str, environment: str) -> str:
    return f"/apps/{quote(application, safe='')}/envs/{quote(environment, safe='')}"


def current_config(controller: Controller, application: str, environment: str) -> dict | None:
    try:
        _, config = controller.call("GET", prefix(application, environment) + "/config/admin")
    except Failed as exc:
        if exc.http_status == 404:  # no version yet
            return None
        raise
    return {"version": config["version"], **{key: config[key] for key in CONTENT}}


def export(controller: Controller, only: str | None) -> str:
    return yaml.safe_dump(read_live(controller, only), sort_keys=False, default_flow_style=False)


def read_desired(path: str) -> dict:
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
        desired = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise Failed(f"cannot read {path}: {exc}", 2) from None
    if not isinstance(desired, dict) or not set(desired) <= {"environments", "applications"}:
        raise Failed(f"{path}: expected `environments` and `applications` at the top", 2)
    for key in ("environments", "applications"):
        items = desired.get(key) or []
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and item.get("name") for item in items
        ):
            raise Failed(f"{path}: `{key}` is a list of mappings, each with a `name`", 2)
    return desired


def plan_steps(controller: Controller, desired: dict) -> list[Step]:
    """What apply would do, read against the controller now: only the scopes the document
    names are read, so that a token of part of the fleet diffs its part."""
    steps: list[Step] = []
    live_envs = {env["name"]: env for env in controller.listed("/envs")}
    live_apps = {}
    for application in controller.listed("/apps"):
        named = next(
            (
                app
                for app in desired.get("applications") or []
                if app["name"] == application["name"]
            ),
            None,
        )
        if named is None:
            continue
        scopes = {}
        for environment in named.get("environments") or {}:
            if environment in live_envs:
                current = current_config(controller, application["name"], environment)
                if current is not None:
                    scopes[environment] = current
        live_apps[application["name"]] = {**application, "environments": scopes}
    for env in desired.get("environments") or []:
        name = env["name"]
        wanted = {key: env[key] for key in POLICY if key in env}
        if name not in live_envs:
            steps.append(Step(f"+ environment {name}", "POST", "/envs", {"name": name, **wanted}))
            continue
        changed = {k: v for k, v in wanted.items() if differs(live_envs[name].get(k), v)}
        for key, value in changed.items():
            steps.append(
                Step(
                    f"~ environment {name} {key}: {live_envs[name].get(key)} -> {value}",
                    "PATCH",
                    f"/envs/{quote(name, safe='')}",
                    {key: value},
                )
            )
    for app in desired.get("applications") or []:
        name = app["name"]
        here = live_apps.get(name)
        if here is None:
            body = {"name": name, "description": app.get("description", "")}
            steps.append(Step(f"+ application {name}", "POST", "/apps", body))
            here = {"description": body["description"], "environments": {}}
        elif "description" in app and app["description"] != here["description"]:
            steps.append(
                Step(
                    f"~ application {name} description: {here['description']!r} -> "
                    f"{app['description']!r}",
                    "PATCH",
                    f"/apps/{quote(name, safe='')}",
                    {"description": app["description"]},
                )
            )
        for environment, content in (app.get("environments") or {}).items():
            steps.extend(scope_steps(name, environment, content or {}, here["environments"]))
    return steps


def differs(live, wanted) -> bool:
    """Whether `wanted` asks for something `live` does not hold. A plan is compared on the keys
    the file gives: the controller completes a plan with its defaults, and a file that leaves
    them out must not differ forever."""
    if isinstance(live, dict) and isinstance(wanted, dict):
        return any(live.get(key) != value for key, value in wanted.items())
    return live != wanted


def scope_steps(application: str, environment: str, content: dict, live: dict) -> list[Step]:
    scope = f"{application}/{environment}"
    wanted = {key: content[key] for key in CONTENT if key in content}
    current = live.get(environment)
    path = prefix(application, environment) + "/config/admin"
    if current is None:
        if set(wanted) != set(CONTENT):
            raise Failed(f"{scope} has no version yet: give both config_url and pooling_interval")
        line = f"+ {scope} " + " ".join(f"{key}={wanted[key]}" for key in CONTENT)
        return [Step(line, "POST", path, wanted, scope=scope)]
    changed = {key: value for key, value in wanted.items() if current[key] != value}
    if not changed:
        return []
    lines = [f"~ {scope} {key}: {current[key]} -> {value}" for key, value in changed.items()]
    body = dict(changed)
    if content.get("rollout") is not None:
        # The plan this change goes out with (else the environment's default plan applies).
        body["rollout"] = content["rollout"]
        lines[-1] += " (rolled out in stages)"
    # If-Match: what the diff read must still be current when the change is made.
    headers = {"If-Match": f'"{current["version"]}"'}
    return [Step("\n".join(lines), "PUT", path, body, headers, scope)]


def apply_step(controller: Controller, step: Step) -> tuple[int, dict]:
    """Make one change; a scope changed on the controller since the diff read it is refused
    (If-Match) with a message saying so."""
    try:
        return controller.call(step.method, step.path, step.body, step.headers)
    except Failed as exc:
        if exc.http_status == 412:
            raise Failed(
                f"{step.scope} changed on the controller since this diff was read: run "
                "`dcsctl diff` again"
            ) from None
        raise
