"""The worker's settings, read without Django: the worker has no database, cache or secret key.

`manage.py run_worker` reads them here (environment, then the settings file, then the default);
`show_settings` with CONFIG_ROLE=worker prints them.
"""

from dataclasses import dataclass

from protocol.logs import read_log_settings
from protocol.settings import SettingsReader


@dataclass(frozen=True)
class WorkerSettings:
    internal_key: str | None
    require_signature: bool
    bind: str
    threads: int
    access_log: bool
    connect_timeout: float
    read_timeout: float
    max_body_bytes: int
    block_private_upstreams: bool
    log_level: str
    log_format: str


def read_settings(reader: SettingsReader) -> WorkerSettings:
    log_level, log_format = read_log_settings(reader)
    return WorkerSettings(
        # The secret the agent proves it holds when it pushes a configuration.
        internal_key=reader.str("INTERNAL_KEY"),
        # On: pushes must carry X-Signature (over the body, once). Off: the seed's plain
        # X-Internal-Key is accepted too, a key that anyone who sees one push can send again
        # with any body; the agent always signs, so only a client of the seed's needs it off.
        require_signature=reader.bool("WORKER_REQUIRE_SIGNATURE", True),
        bind=reader.str("WORKER_BIND", "127.0.0.1:8082"),
        threads=reader.int("WORKER_THREADS", 16, minimum=1),
        # A line per request; off by default, as it costs a busy worker more CPU than a hit
        # itself. Pushes, refusals and upstream failures are logged either way.
        access_log=reader.bool("WORKER_ACCESS_LOG", False),
        # GET /hit: seconds to connect to the configured URL, and how long its upstream may
        # send nothing (in whole seconds, rounded up: libcurl counts them so).
        connect_timeout=reader.float("WORKER_CONNECT_TIMEOUT", 5.0),
        read_timeout=reader.float("WORKER_READ_TIMEOUT", 10.0),
        # GET /hit answers 502 rather than buffer an upstream body larger than this.
        max_body_bytes=reader.int("WORKER_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1),
        # When on, GET /hit refuses upstreams that resolve to private, loopback, link-local or
        # reserved addresses (502), so a pushed URL cannot reach into the worker's own network.
        block_private_upstreams=reader.bool("WORKER_BLOCK_PRIVATE_UPSTREAMS", True),
        log_level=log_level,
        log_format=log_format,
    )
