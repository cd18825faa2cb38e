import os
import signal
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from agent.settings import AgentSettings
from agent.settings import read_settings as read_agent_settings
from agent.state import CorruptStateFile, StateDir
from apps.accounts.management.commands.seed_admin import SEED_PASSWORD
from apps.agents.models import Agent
from apps.agents.services import issue_registration_token
from apps.ops.stack import Child, ChildDied, Stack, internal_key_from
from protocol.cli import PortInUse, UsageError, check_port_free, parse_bind
from protocol.config_file import ConfigFile
from protocol.settings import SettingsError, SettingsReader
from worker.settings import WorkerSettings
from worker.settings import read_settings as read_worker_settings


def daemon_settings() -> tuple[WorkerSettings, AgentSettings]:
    """The settings of the worker and the agent this command starts. run_stack takes no
    settings file: they read the environment, as the children will."""
    try:
        worker = read_worker_settings(SettingsReader(ConfigFile(None, "worker")))
        agent = read_agent_settings(SettingsReader(ConfigFile(None, "agent")))
    except SettingsError as exc:
        raise CommandError(str(exc), returncode=2) from None
    return worker, agent


class Command(BaseCommand):
    help = (
        "Run the whole stack in the foreground: controller, worker and one agent, on the "
        "embedded defaults. Ctrl-C stops all three; if one dies, the others are stopped too."
    )

    def add_arguments(self, parser):
        worker, agent = daemon_settings()
        parser.add_argument(
            "--controller-bind",
            default=settings.CONTROLLER_BIND,
            help="HOST:PORT of the controller (CONTROLLER_BIND).",
        )
        parser.add_argument(
            "--worker-bind",
            default=worker.bind,
            help="HOST:PORT of the worker (WORKER_BIND).",
        )
        parser.add_argument(
            "--state-dir",
            default=agent.state_dir,
            help="The agent's state dir (AGENT_STATE_DIR).",
        )

    def handle(self, *args, controller_bind: str, worker_bind: str, state_dir: str, **options):
        controller_url, worker_url = check_binds(controller_bind, worker_bind)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_admin")
        internal_key = daemon_settings()[0].internal_key or internal_key_from(settings.VAR_DIR)
        env = {"INTERNAL_KEY": internal_key}
        worker_env = dict(env)
        local_upstreams = not os.environ.get("WORKER_BLOCK_PRIVATE_UPSTREAMS", "").strip()
        if local_upstreams:
            # The local demo fetches local URLs; a deployed worker refuses them by default.
            worker_env["WORKER_BLOCK_PRIVATE_UPSTREAMS"] = "0"
        controller_env = dict(env)
        local_webhooks = not os.environ.get("WEBHOOKS_BLOCK_PRIVATE_URLS", "").strip()
        if local_webhooks:
            # Likewise for webhook receivers run on this machine.
            controller_env["WEBHOOKS_BLOCK_PRIVATE_URLS"] = "0"
        agent_env = dict(env)
        registration_token = self._registration_token_if_needed(state_dir)
        if registration_token:
            # Through the environment, not the command line: `ps` shows arguments to everyone.
            agent_env["REGISTRATION_TOKEN"] = registration_token
        agent_args = ["--controller-url", controller_url, "--worker-url", worker_url]
        stack = Stack(
            [
                Child("controller", ["run_controller", "--bind", controller_bind], controller_env),
                Child("worker", ["run_worker", "--bind", worker_bind], worker_env),
                Child("agent", ["run_agent", *agent_args, "--state-dir", state_dir], agent_env),
            ],
            sys.stdout.buffer,
            prefix=settings.LOG_FORMAT != "json",
        )

        def on_signal(signum, frame):
            stack.stop_requested.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        controller, worker, agent = stack.children
        if local_upstreams:
            stack.say(
                "run_stack: WORKER_BLOCK_PRIVATE_UPSTREAMS is off for this local demo, so /hit "
                "may fetch local and private addresses; it is on by default everywhere else."
            )
        if local_webhooks:
            stack.say(
                "run_stack: WEBHOOKS_BLOCK_PRIVATE_URLS is off for this local demo, so webhooks "
                "may be sent to local and private addresses; it is on by default everywhere else."
            )
        try:
            stack.start(controller, f"{controller_url}/healthz")
            stack.start(worker, f"{worker_url}/health")
            stack.start(agent, None)
            if not stack.stop_requested.is_set():
                stack.say(_banner(controller_url, worker_url))
            stack.supervise()
        except ChildDied as exc:
            stack.say(f"run_stack: {exc}; stopping the stack.")
            stack.stop_all()
            raise CommandError(f"{exc}. See its output above.", returncode=1) from None
        stack.say("run_stack: stopping (agent, worker, controller)...")
        stack.stop_all()

    def _registration_token_if_needed(self, state_dir: str) -> str | None:
        """A fresh token when the agent has no credentials this database knows."""
        try:
            credentials = StateDir(state_dir).load_credentials()
        except CorruptStateFile:
            credentials = None
        if (
            credentials is not None
            and Agent.objects.filter(
                pk=credentials.get("agent_id"), revoked_at__isnull=True
            ).exists()
        ):
            return None
        token, _ = issue_registration_token()
        self.stdout.write("Issued a registration token for the local agent.")
        return token


def check_binds(controller_bind: str, worker_bind: str) -> tuple[str, str]:
    """The controller's and the worker's URLs; CommandError (status 2) for a settings file,
    a bad HOST:PORT or a port in use, before anything starts."""
    if settings.CONFIG_FILE.path:
        # One file cannot serve three processes: `bind` alone means a different address to
        # each. Each process takes its own file instead.
        raise CommandError(
            f"run_stack does not take a settings file ({settings.CONFIG_FILE.path}, from "
            "--config or CONFIG_FILE): it runs the local stack from the environment. To run "
            "from files, start each process with its own: run_controller --config "
            "config/config.yaml, run_worker --config config/worker-config.yaml, run_agent "
            "--config config/agent-config.yaml.",
            returncode=2,
        )
    try:
        controller_host, controller_port = parse_bind(controller_bind)
        worker_host, worker_port = parse_bind(worker_bind)
        check_port_free(controller_host, controller_port, "controller", "CONTROLLER_BIND")
        check_port_free(worker_host, worker_port, "worker", "WORKER_BIND")
    except (UsageError, PortInUse) as exc:
        raise CommandError(str(exc), returncode=2) from None
    return (
        f"http://{_url_host(controller_host)}:{controller_port}",
        f"http://{_url_host(worker_host)}:{worker_port}",
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - listening everywhere: reach it locally
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _banner(controller_url: str, worker_url: str) -> str:
    email = settings.ADMIN_EMAIL
    if settings.ADMIN_PASSWORD == SEED_PASSWORD:
        password = SEED_PASSWORD
        login = f'{{"email":"{email}","password":"{password}"}}'
    else:
        password = "(the ADMIN_PASSWORD you set)"  # noqa: S105 - a hint, not a password
        login = f'{{"email":"{email}","password":"$ADMIN_PASSWORD"}}'
    return f"""
==============================================================================
 The stack is up.
   Admin site   {controller_url}/admin/
   Credentials  {email} / {password}
   API docs     {controller_url}/api/docs/
   Worker       {worker_url}/health   {worker_url}/hit
   Metrics      {controller_url}/metrics   {worker_url}/metrics
 Try it:
   TOKEN=$(curl -s -X POST {controller_url}/login -H 'Content-Type: application/json' \\
     -d '{login}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access"])')
   curl -s -X POST {controller_url}/config/admin -H "Authorization: Bearer $TOKEN" \\
     -H 'Content-Type: application/json' \\
     -d '{{"config_url":"https://api.ipify.org","pooling_interval":30}}'
   curl -s {worker_url}/hit
 Ctrl-C stops all three.
==============================================================================
"""
