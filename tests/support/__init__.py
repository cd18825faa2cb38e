"""What the tests share: real processes on free ports (processes), the worker as a process and
in-process WSGI calls (worker), an upstream HTTP stub (upstream), the agent's test doubles
(agent), the clients a test calls the controller with (clients), one ASGI request (asgi), a
fleet of registered agents (fleet) and a background poller (polling). Fixtures built on these
live in tests/conftest.py."""
