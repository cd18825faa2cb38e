"""Why a scope cannot be found or made; answered by the API's exception handler."""

from rest_framework import status

from controller_site.errors import NotFoundError, ServiceError


class UnknownApplication(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Application {name!r} does not exist.")


class UnknownEnvironment(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Environment {name!r} does not exist.")


class NameTaken(ServiceError):
    status_code = status.HTTP_409_CONFLICT

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"An {kind} named {name!r} exists already.")
