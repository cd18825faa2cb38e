"""The README's synopses, make table and variables against the commands and the Makefile they
describe: a flag, a target or a variable added without its line in the README fails here."""

import re
import subprocess
import sys

import pytest

from tests.support.processes import ROOT, base_env

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
# Options every Django command has; the README's synopses leave them out.
DJANGO_COMMON = {"--help", "--version", "--settings", "--pythonpath", "--traceback", "--no-color"}
DJANGO_COMMON |= {"--force-color", "--skip-checks"}


def synopsis(command: str) -> str:
    (line,) = [row for row in README.splitlines() if f"`python manage.py {command} [" in row]
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


@pytest.mark.parametrize("command", ["run_controller", "run_worker", "run_agent", "run_stack"])
def test_each_synopsis_lists_every_flag_of_the_command_all_of_them_optional(command):
    optional, required = optional_and_required(synopsis(command))
    assert required == set(), f"{command}: shown as required: {sorted(required)}"
    assert optional == help_options(command)


def test_a_flag_missing_or_shown_required_in_a_synopsis_is_caught():
    optional, required = optional_and_required("[--config FILE] --bind HOST:PORT")
    assert required == {"--bind"} and optional == {"--config"}
    assert optional | required != help_options("run_worker")


def make_table() -> str:
    return README.split("### Make targets", 1)[1].split("\n## ", 1)[0]


def test_every_make_target_with_a_help_line_is_in_the_make_table():
    targets = re.findall(r"^([a-z][a-z.-]*):[^\n#]*## ", MAKEFILE, re.M)
    assert "install" in targets and "docker-build" in targets
    missing = [name for name in targets if f"`make {name}`" not in make_table()]
    assert missing == []


def test_every_variable_the_makefile_takes_from_its_caller_is_in_the_readme():
    defaults = set(re.findall(r"^([A-Z_]+) \?=", MAKEFILE, re.M))
    assigned = set(re.findall(r"^([A-Z_]+) :?=", MAKEFILE, re.M))
    # Read but never set: only the caller can give them (PYTEST_ARGS).
    read_only = set(re.findall(r"\$\(([A-Z_]+)\)", MAKEFILE)) - defaults - assigned
    read_only -= {"MAKEFILE_LIST", "MAKE", "CURDIR", "SHELL", "MAKECMDGOALS", "MAKEFLAGS"}
    variables = defaults | read_only
    assert {"PYTHON", "VENV", "COMPOSE", "PYTEST_ARGS"} <= variables
    missing = [name for name in sorted(variables) if f"`{name}`" not in make_table()]
    assert missing == []


def test_every_setting_the_image_sets_is_in_the_readme():
    dockerfile = (ROOT / "Dockerfile").read_text()
    blocks = re.findall(r"^ENV ((?:[^\n]*\\\n)*[^\n]*)", dockerfile, re.M)
    names = {name for block in blocks for name in re.findall(r"([A-Z_]+)=", block)}
    # Python's and pip's own switches are the image's business, not settings of ours.
    names = {name for name in names if not name.startswith(("PYTHON", "PIP_"))}
    assert "HEALTHCHECK_URL" in names
    missing = [name for name in sorted(names) if f"`{name}`" not in README]
    assert missing == []
