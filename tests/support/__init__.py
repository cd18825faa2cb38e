"""What the tests share: real processes on free ports (processes), the worker as a process and
in-process WSGI calls (worker), an upstream HTTP stub (upstream), and the agent's test doubles
(agent). Fixtures built on these live in tests/conftest.py."""
