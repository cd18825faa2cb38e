"""dcsctl's commands. Exit status: 0 done (a rollout completed), 1 refused, failed, halted,
aborted or timed out, 2 bad usage. Errors are one line on stderr, never a traceback."""

import argparse
import json
import sys
import time
from pathlib import Path
from urllib.parse import quote

import yaml

from dcsctl import fleet
from dcsctl.client import Controller, Failed, write_config

FIELDS = ("config_url", "pooling_interval")
# How a --wait follows a rollout: its state every so often, until one of these.
WAIT_POLL_SECONDS = 1.0
SUCCEEDED = {"completed"}
STOPPED = {"halted", "aborted"}


def scope_path(scope: str) -> str:
    """`APP/ENV` → the scoped routes' prefix."""
    application, slash, environment = scope.partition("/")
    if not slash or not application or not environment or "/" in environment:
        raise Failed(f"{scope!r}: name a scope as APPLICATION/ENVIRONMENT", 2)
    return f"/apps/{quote(application, safe='')}/envs/{quote(environment, safe='')}"


def show(args, data, lines) -> None:
    """`--output json` prints the controller's answer; otherwise the given lines."""
    if getattr(args, "output", "text") == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            print(line)


def config_line(scope: str, config: dict) -> str:
    return (
        f"{scope} v{config['version']}: config_url={config['config_url']} "
        f"pooling_interval={config['pooling_interval']}"
    )


def get(controller: Controller, args) -> int:
    if args.scope:
        _, config = controller.call("GET", scope_path(args.scope) + "/config/admin")
        show(args, config, [config_line(args.scope, config)])
        return 0
    applications = controller.listed("/apps")
    every = []
    for application in applications:
        _, detail = controller.call("GET", f"/apps/{quote(application['name'], safe='')}")
        every.append(detail)
    lines = [
        f"{detail['name']}/{scope['environment']} v{scope['current_version'] or '-'} "
        f"rollout={scope['rollout_state'] or '-'} agents in sync {scope['agents']['in_sync']}, "
        f"behind {scope['agents']['behind']}, stale {scope['agents']['stale']}"
        for detail in every
        for scope in detail["environments"]
    ]
    show(args, every, lines)
    return 0


def history(controller: Controller, args) -> int:
    entries = controller.listed(scope_path(args.scope) + "/config/admin/history")
    show(
        args,
        entries,
        [
            f"v{entry['version']} {entry['created_at']} {entry.get('created_by') or '-'}: "
            f"{', '.join(entry['changed']) or 'nothing'} changed"
            for entry in entries
        ],
    )
    return 0


def read_plan(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        plan = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise Failed(f"cannot read the rollout plan {path}: {exc}", 2) from None
    if not isinstance(plan, dict):
        raise Failed(f"{path}: a rollout plan is a mapping (waves, bake_seconds, ...)", 2)
    return plan


def told(scope: str, status: int, data: dict, before: int | None = None) -> str:
    """What a change did, in one line (`before`: the version it was made against)."""
    if status == 202:
        return (
            f"{scope}: change request #{data['id']} opened; it needs approval before it publishes"
        )
    if status == 201 or (before is not None and data["version"] != before):
        return f"{scope}: v{data['version']} published"
    return f"{scope}: already current at v{data['version']}; nothing changed"


def set_config(controller: Controller, args) -> int:
    body: dict = {}
    for pair in args.values:
        name, equals, value = pair.partition("=")
        if not equals or name not in FIELDS:
            raise Failed(f"{pair!r}: give config_url=URL or pooling_interval=SECONDS", 2)
        body[name] = value
    if "pooling_interval" in body:
        if not body["pooling_interval"].isdigit():
            raise Failed("pooling_interval must be whole seconds", 2)
        body["pooling_interval"] = int(body["pooling_interval"])
    plan = read_plan(args.rollout)
    if plan is not None:
        body["rollout"] = plan
    if not body:
        raise Failed("nothing to set: give config_url=... and/or pooling_interval=...", 2)
    path = scope_path(args.scope) + "/config/admin"
    _, current = controller.call("GET", path)
    # Against the version just read: a change someone made meanwhile is refused (412), not
    # overwritten.
    status, data = controller.call("PUT", path, body, {"If-Match": f'"{current["version"]}"'})
    show(args, data, [told(args.scope, status, data, current["version"])])
    return 0


def rollback(controller: Controller, args) -> int:
    path = scope_path(args.scope) + "/config/admin/rollback"
    status, data = controller.call("POST", path, {"version": args.version})
    show(
        args,
        data,
        [f"{args.scope}: rolled back to v{args.version}'s content as v{data['version']}"],
    )
    return 0


def agents(controller: Controller, args) -> int:
    listed = controller.listed(scope_path(args.scope) + "/agents")
    show(
        args,
        listed,
        [
            f"{agent['id']} {agent['name']} {agent['status']} applied "
            f"v{agent.get('applied_version') or '-'} of v{agent.get('target_version') or '-'}"
            for agent in listed
        ],
    )
    return 0


def progress(rollout: dict) -> str:
    rate = (rollout.get("health") or {}).get("version", {}).get("failure_rate")
    gate = f"{rate:.0%}" if isinstance(rate, int | float) else "-"
    return (
        f"v{rollout['version']} {rollout['state']}: wave {rollout['wave']} of "
        f"{len(rollout['waves'])}, applied {rollout['agents_applied']}/"
        f"{rollout['agents_targeted']} targeted, failure rate {gate}"
    )


def rollout(controller: Controller, args) -> int:
    path = scope_path(args.scope) + "/config/admin/rollout"
    if args.action != "status":
        controller.call("POST", f"{path}/{args.action}", {"reason": args.reason or ""})
    _, current = controller.call("GET", path)
    if not args.wait:
        show(args, current, [f"{args.scope}: {progress(current)}"])
        return 0 if current["state"] not in STOPPED else 1
    return wait_for(controller, args, path, current)


def wait_for(controller: Controller, args, path: str, current: dict) -> int:
    """Follow the rollout to its end: a live line on a terminal, a line per change otherwise."""
    deadline = time.monotonic() + args.timeout if args.timeout else None
    live = sys.stdout.isatty() and args.output != "json"
    last = None
    while True:
        line = f"{args.scope}: {progress(current)}"
        if live:
            print("\r" + line.ljust(100), end="", flush=True)
        elif line != last and args.output != "json":
            print(line, flush=True)
        last = line
        if current["state"] in SUCCEEDED | STOPPED:
            break
        if deadline is not None and time.monotonic() >= deadline:
            if live:
                print()
            raise Failed(f"{args.scope}: still {current['state']} after {args.timeout:g} s")
        time.sleep(WAIT_POLL_SECONDS)
        _, current = controller.call("GET", path)
    if live:
        print()
    if args.output == "json":
        print(json.dumps(current, indent=2, sort_keys=True))
    return 0 if current["state"] in SUCCEEDED else 1


def promote(controller: Controller, args) -> int:
    application = quote(args.application, safe="")
    query = f"from={quote(args.source, safe='')}&to={quote(args.target, safe='')}"
    _, compared = controller.call("GET", f"/apps/{application}/compare?{query}")
    taken = compared["from"]
    if args.version is not None:
        # That version's content, not the source's current one.
        source = scope_path(f"{args.application}/{args.source}") + "/config/admin/history"
        found = [v for v in controller.listed(source) if v["version"] == args.version]
        if not found:
            raise Failed(f"{args.application}/{args.source} has no version {args.version}")
        taken = found[0]
    for name in FIELDS:
        if taken[name] != compared["to"][name]:
            print(f"  {name}: {compared['to'][name]} -> {taken[name]}")
    body: dict = {"from_environment": args.source}
    if args.version is not None:
        body["version"] = args.version
    scope = f"{args.application}/{args.target}"
    status, data = controller.call("POST", scope_path(scope) + "/config/admin/promote", body)
    show(args, data, [told(scope, status, data)])
    return 0


def export_fleet(controller: Controller, args) -> int:
    if args.only and args.only.count("/") > 1:
        raise Failed(f"{args.only!r}: name APPLICATION or APPLICATION/ENVIRONMENT", 2)
    if args.output == "json":
        print(json.dumps(fleet.read_live(controller, args.only), indent=2))
    else:
        print(fleet.export(controller, args.only), end="")
    return 0


def diff(controller: Controller, args) -> int:
    """Exit 0 when apply would change nothing, 1 when it would (the changes printed), 2 on any
    error, as `kubectl diff`."""
    try:
        steps = fleet.plan_steps(controller, fleet.read_desired(args.file))
    except Failed as exc:
        raise Failed(str(exc), 2) from None
    if args.output == "json":
        changes = [
            {"change": step.line, "method": step.method, "path": step.path, "body": step.body}
            for step in steps
        ]
        print(json.dumps(changes, indent=2))
    else:
        for step in steps:
            print(step.line)
    return 1 if steps else 0


def apply(controller: Controller, args) -> int:
    steps = fleet.plan_steps(controller, fleet.read_desired(args.file))
    if not steps:
        print("nothing to change")
        return 0
    rolling = []
    for step in steps:
        print(step.line)
        status, data = fleet.apply_step(controller, step)
        if step.scope is None:
            continue
        if status == 202:
            where = fleet.prefix(*step.scope.split("/"))
            link = f"{controller.url}{where}/config/admin/changes/{data['id']}"
            print(f"  change request #{data['id']} opened, waiting for approval: {link}")
        else:
            print(f"  {step.scope}: v{data['version']} published")
            rolling.append(step.scope)
    if not args.wait:
        return 0
    outcome = 0
    for scope in rolling:
        path = scope_path(scope) + "/config/admin/rollout"
        try:
            _, current = controller.call("GET", path)
        except Failed:
            continue  # published to every agent at once: no rollout to follow
        if current["state"] in SUCCEEDED | STOPPED:
            continue
        args.scope = scope
        outcome = max(outcome, wait_for(controller, args, path, current))
    return outcome


def login(args) -> int:
    controller = Controller.from_options(args.url, args.token)
    controller.call("GET", "/apps")  # refused (one line) unless the token is good there
    path = write_config(controller.url, controller.token)
    print(f"logged in to {controller.url}; kept in {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dcsctl", description=__doc__)
    top.add_argument("--url", help="The controller (DCS_URL).")
    top.add_argument("--token", help="An API token, dcs_... (DCS_TOKEN).")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str):
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--output", choices=["text", "json"], default="text")
        return sub

    command("get", get, "A scope's current configuration, or every scope's state.").add_argument(
        "scope", nargs="?", help="APPLICATION/ENVIRONMENT"
    )
    command("history", history, "A scope's versions, newest first.").add_argument("scope")
    change = command("set", set_config, "Change a scope's configuration.")
    change.add_argument("scope")
    change.add_argument("values", nargs="*", help="config_url=URL pooling_interval=SECONDS")
    change.add_argument("--rollout", help="A YAML or JSON file holding a rollout plan.")
    back = command("rollback", rollback, "Publish an earlier version's content again.")
    back.add_argument("scope")
    back.add_argument("version", type=int)
    command("agents", agents, "A scope's agents and their status.").add_argument("scope")
    steer = command("rollout", rollout, "A scope's rollout: status, or steer it.")
    steer.add_argument("action", choices=["status", "promote", "pause", "resume", "abort"])
    steer.add_argument("scope")
    steer.add_argument("--wait", action="store_true", help="Follow it to its end.")
    steer.add_argument("--timeout", type=float, default=None, help="Give up after S seconds.")
    steer.add_argument("--reason", help="Why (audited).")
    take = command("promote", promote, "Take one environment's content to another.")
    take.add_argument("application")
    take.add_argument("--from", dest="source", required=True)
    take.add_argument("--to", dest="target", required=True)
    take.add_argument("--version", type=int, default=None)
    command(
        "export", export_fleet, "Every application, environment and configuration as YAML."
    ).add_argument("only", nargs="?", help="APPLICATION or APPLICATION/ENVIRONMENT")
    command("diff", diff, "What apply would change (exit 1 when something).").add_argument(
        "-f", "--file", required=True, help="The fleet's YAML (- for stdin)."
    )
    put = command("apply", apply, "Make the controller hold what the file says.")
    put.add_argument("-f", "--file", required=True, help="The fleet's YAML (- for stdin).")
    put.add_argument("--wait", action="store_true", help="Follow the rollouts it starts.")
    put.add_argument("--timeout", type=float, default=None, help="Give up after S seconds.")
    commands.add_parser("login", help="Check and keep --url and --token.").set_defaults(
        handler=None
    )
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = parser()
    try:
        args = arguments.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage
        return int(exc.code or 0) and 2
    try:
        if args.handler is None:
            return login(args)
        if getattr(args, "timeout", None) is not None and args.timeout <= 0:
            raise Failed("--timeout must be positive", 2)
        return args.handler(Controller.from_options(args.url, args.token), args)
    except Failed as exc:
        print(f"dcsctl: {exc}", file=sys.stderr)
        return exc.status
    except (KeyError, TypeError, ValueError) as exc:
        # An answer of another shape than this dcsctl knows: a controller of another release.
        print(f"dcsctl: unexpected answer from the controller ({exc!r})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1


def run() -> None:
    sys.exit(main())
