"""How drf-spectacular documents the admin's JWT (the stock scheme, under our class) and the
pipelines' API tokens."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class AdminJWTScheme(SimpleJWTScheme):
    target_class = "apps.accounts.auth.AdminJWTAuthentication"


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.auth.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A pipeline's API token, `dcs_...` (POST /tokens).",
        }
