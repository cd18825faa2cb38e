"""Checks on the suite itself: what it cleans between tests, and what it refuses to let pass."""

import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.core.cache import cache

from tests.conftest import clear_cache
from tests.support.processes import ROOT, base_env, dead_port, start_controller


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


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_readiness_wait_does_not_take_another_servers_answer_for_the_process():
    # A stand-in answers /healthz on the port; the controller started there cannot bind it and
    # exits. The wait must fail, not succeed on the stand-in's answer.
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        with pytest.raises(AssertionError, match="controller did not start"):
            start_controller(redis_url=None, port=port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_dead_port_refuses_connections_and_cannot_be_taken():
    with dead_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
