"""dcsctl: the controller's admin API from a terminal or a pipeline, with an API token.

It imports no Django, so that it starts at once and runs where only `requests` and PyYAML are
installed (`pip install .` in the checkout installs the `dcsctl` command)."""
