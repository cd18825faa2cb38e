"""The README and the manual under docs/ against what they describe: the synopses, make table
and variables against the commands and the Makefile (a flag, a target or a variable added without
its line fails here), the README's tour against what `make run` prints, and the table of where
things live against the import graph."""

import re
import subprocess
import sys

import pytest

from tests.support.processes import ROOT, base_env

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# The processes' synopses, the settings files and the make targets.
COMMANDS = (DOCS / "commands.md").read_text()
# The pages whose tables list the settings: the controller's, the worker's, the agent's.
SETTINGS_PAGES = ("settings.md", "worker.md", "agent.md")
MAKEFILE = (ROOT / "Makefile").read_text()
# Options every Django command has; the README's synopses leave them out.
DJANGO_COMMON = {"--help", "--version", "--settings", "--pythonpath", "--traceback", "--no-color"}
DJANGO_COMMON |= {"--force-color", "--skip-checks"}


def synopsis(command: str) -> str:
    (line,) = [row for row in COMMANDS.splitlines() if f"`python manage.py {command} [" in row]
    return re.search(rf"`python manage.py {command} ([^`]*)`", line)[1]


def help_options(command: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", command, "--help"],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)", result.stdout, re.M)) - DJANGO_COMMON


def optional_and_required(text: str) -> tuple[set[str], set[str]]:
    bracketed = re.findall(r"\[([^\]]*)\]", text)
    optional = {flag for part in bracketed for flag in re.findall(r"--[a-z][a-z-]*", part)}
    required = set(re.findall(r"--[a-z][a-z-]*", re.sub(r"\[[^\]]*\]", "", text)))
    return optional, required


@pytest.mark.parametrize(
    "command", ["run_controller", "run_worker", "run_agent", "run_stack", "run_jobs"]
)
def test_each_synopsis_lists_every_flag_of_the_command_all_of_them_optional(command):
    optional, required = optional_and_required(synopsis(command))
    assert required == set(), f"{command}: shown as required: {sorted(required)}"
    assert optional == help_options(command)


def test_a_flag_missing_or_shown_required_in_a_synopsis_is_caught():
    optional, required = optional_and_required("[--config FILE] --bind HOST:PORT")
    assert required == {"--bind"} and optional == {"--config"}
    assert optional | required != help_options("run_worker")


def make_table() -> str:
    return COMMANDS.split("\n## Make targets\n", 1)[1].split("\n## ", 1)[0]


def test_every_make_target_with_a_help_line_is_in_the_make_table():
    targets = re.findall(r"^([a-z][a-z.-]*):[^\n#]*## ", MAKEFILE, re.M)
    assert "install" in targets and "docker-build" in targets
    missing = [name for name in targets if f"`make {name}`" not in make_table()]
    assert missing == []


def test_every_variable_the_makefile_takes_from_its_caller_is_in_the_make_table():
    defaults = set(re.findall(r"^([A-Z_]+) \?=", MAKEFILE, re.M))
    assigned = set(re.findall(r"^([A-Z_]+) :?=", MAKEFILE, re.M))
    # Read but never set: only the caller can give them (PYTEST_ARGS).
    read_only = set(re.findall(r"\$\(([A-Z_]+)\)", MAKEFILE)) - defaults - assigned
    read_only -= {"MAKEFILE_LIST", "MAKE", "CURDIR", "SHELL", "MAKECMDGOALS", "MAKEFLAGS"}
    variables = defaults | read_only
    assert {"PYTHON", "VENV", "COMPOSE", "PYTEST_ARGS"} <= variables
    missing = [name for name in sorted(variables) if f"`{name}`" not in make_table()]
    assert missing == []


def test_every_setting_the_image_sets_is_in_a_settings_table():
    dockerfile = (ROOT / "Dockerfile").read_text()
    blocks = re.findall(r"^ENV ((?:[^\n]*\\\n)*[^\n]*)", dockerfile, re.M)
    names = {name for block in blocks for name in re.findall(r"([A-Z_]+)=", block)}
    # Python's and pip's own switches are the image's business, not settings of ours.
    names = {name for name in names if not name.startswith(("PYTHON", "PIP_"))}
    assert "HEALTHCHECK_URL" in names
    tables = "".join((DOCS / page).read_text() for page in SETTINGS_PAGES)
    missing = [name for name in sorted(names) if f"`{name}`" not in tables]
    assert missing == []


def test_the_readme_tour_is_what_make_run_prints():
    # The banner's "Try it" lines, for the default addresses, as the README and the quickstart
    # page show them (whitespace aside): a change to one without the other fails here.
    from apps.ops.management.commands.run_stack import _banner

    banner = _banner("http://127.0.0.1:8080", "http://127.0.0.1:8082")
    try_it = banner.split(" Try it:\n", 1)[1].split(" Ctrl-C", 1)[0]
    assert "curl -s http://127.0.0.1:8082/hit" in try_it
    for text in (README, (DOCS / "quickstart.md").read_text()):
        assert " ".join(try_it.split()) in " ".join(text.split())


def test_every_page_the_readme_links_exists():
    links = re.findall(r"\]\(((?!https?:)[^)#]+)", README)
    assert "docs/DEPLOYMENT.md" in links and "docs/admin-dashboard.png" in links
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_the_readme_stays_an_introduction():
    # The manual is docs/; the README is what fits on a screen or two and points there.
    assert len(README.splitlines()) <= 80
    assert "docs/quickstart.md" in README and "make docs" in README


def layout_rows() -> dict[str, str]:
    """folder -> what the table of docs/layout.md says it imports, for one-folder rows."""
    rows = {}
    for line in (DOCS / "layout.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        folder = re.fullmatch(r"`((?:apps/)?[a-z_]+)/?`", cells[0]) if len(cells) == 3 else None
        if folder:
            rows[folder[1]] = cells[2]
    return rows


def stated_imports(cell: str, apps: set[str]) -> set[str]:
    named = set(re.findall(r"`((?:apps/)?[a-z_]+)/?`", cell))
    # `apps/` alone stands for every app.
    return {app for app in apps} | (named - {"apps"}) if "apps" in named else named


def test_where_things_live_lists_every_app_with_the_packages_it_imports():
    from tests.test_import_graph import build_graph

    def unit(module: str) -> str:
        parts = module.split(".")
        return "/".join(parts[:2]) if parts[0] == "apps" else parts[0]

    apps = {
        f"apps/{path.name}" for path in (ROOT / "apps").iterdir() if (path / "apps.py").exists()
    }
    assert {"apps/rollouts", "apps/changes", "apps/ops"} <= apps
    imports: dict[str, set[str]] = {}
    for module, targets in build_graph(ROOT).items():
        imports.setdefault(unit(module), set()).update(map(unit, targets))
    rows = layout_rows()
    assert apps <= set(rows), f"no row for {sorted(apps - set(rows))} in docs/layout.md"
    for folder, cell in rows.items():
        actual = imports.get(folder, set()) - {folder}
        assert stated_imports(cell, apps) == actual, folder


def test_a_wrong_import_in_where_things_live_is_caught():
    apps = {"apps/configs", "apps/agents"}
    assert stated_imports("`apps/configs`, `protocol/`", apps) == {"apps/configs", "protocol"}
    assert stated_imports("`apps/`, `protocol/`", apps) == apps | {"protocol"}
    assert stated_imports("the standard library and PyYAML; nothing of ours", apps) == set()
