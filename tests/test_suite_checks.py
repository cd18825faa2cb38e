"""Checks on the suite itself: what it cleans between tests, and what it refuses to let pass."""

import subprocess
import sys

import pytest
from django.core.cache import cache

from tests.conftest import clear_cache
from tests.support.processes import ROOT, base_env


@pytest.mark.redis
def test_cleaning_between_tests_deletes_only_the_caches_own_keys():
    client = cache.client.get_client()
    client.set("not-the-cache:kept", b"1")
    cache.set("made-by-the-cache", 1)
    try:
        clear_cache()
        assert cache.get("made-by-the-cache") is None
        assert client.get("not-the-cache:kept") == b"1"
    finally:
        client.delete("not-the-cache:kept")


def test_an_assertion_that_fails_in_a_thread_fails_the_test(tmp_path):
    # pytest only warns about an exception in a thread; pyproject.toml makes that an error.
    test_file = tmp_path / "test_in_a_thread.py"
    test_file.write_text(
        "import threading\n\n"
        "def test_it():\n"
        "    thread = threading.Thread(target=lambda: [][0])\n"
        "    thread.start()\n"
        "    thread.join()\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            str(test_file),
        ],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout, result.stdout
