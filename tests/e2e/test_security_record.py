"""docs/SECURITY.md cannot drift from the suite: its table of attacks is exactly the rendering of
docs/security.json, which holds a result for every attack the suite tries, from a commit of this
history and from the attack definitions as they are now."""

import ast
import json
import subprocess

from tests.e2e.security import ATTACKS, BEGIN, DOC, END, RESULTS, ROOT, problems, render_table

TESTS = ROOT / "tests"


def test_every_attack_is_recorded_by_the_test_it_names():
    for key, attack in ATTACKS.items():
        path, _, function = attack.test.partition("::")
        source = (TESTS / path).read_text()
        tree = ast.parse(source)
        functions = {
            node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
        }
        assert function in functions, attack.test
        recorded = {
            call.args[0].value
            for call in ast.walk(functions[function])
            if isinstance(call, ast.Call)
            and getattr(call.func, "id", None) == "record_attack"
            and call.args
            and isinstance(call.args[0], ast.Constant)
        }
        assert key in recorded, f"{attack.test} does not record {key!r}"


def test_the_results_are_complete_current_and_from_this_history():
    results = json.loads(RESULTS.read_text())
    assert problems(results) == [], "run the suite, then python -m tests.e2e.security"
    commit = results["commit"]
    known = subprocess.run(
        ["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT, check=False
    )
    assert known.returncode == 0, f"{commit} is not a commit of this history"
    for key, result in results["attacks"].items():
        assert result["outcome"] and result["recorded_at"], key


def test_the_page_shows_exactly_the_recorded_results():
    page = DOC.read_text()
    assert page.count(BEGIN) == 1 and page.count(END) == 1
    table = page[page.index(BEGIN) : page.index(END) + len(END)]
    assert table == render_table(json.loads(RESULTS.read_text()))
