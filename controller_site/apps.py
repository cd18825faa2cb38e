"""The Django admin, installed with the operator's console as its site (admin_site.py).

Kept apart from the site itself: Django imports this module while it loads the apps, before
any model can be imported, and the site's dashboard imports models at the top of its file.
"""

from django.contrib.admin.apps import AdminConfig


class ControllerAdminConfig(AdminConfig):
    default_site = "controller_site.admin_site.ControllerAdminSite"
