"""How drf-spectacular documents the admin's JWT (the stock scheme, under our class)."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme


class AdminJWTScheme(SimpleJWTScheme):
    target_class = "apps.accounts.auth.AdminJWTAuthentication"
