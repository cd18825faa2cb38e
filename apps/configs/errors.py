"""The configs app's refusals; controller_site.errors turns them into HTTP answers."""

from controller_site.errors import NotFoundError


class NoConfigYet(NotFoundError):
    def __init__(self) -> None:
        super().__init__("No configuration has been created yet.")


class UnknownVersion(NotFoundError):
    def __init__(self, version: int) -> None:
        super().__init__(f"Configuration version {version} does not exist.")
