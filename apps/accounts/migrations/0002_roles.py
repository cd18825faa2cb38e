"""The four roles as groups. Staff who were not superusers could do everything before roles
existed; they keep that by holding every role, instead of losing access on upgrade."""

from django.db import migrations

ROLES = ("viewer", "editor", "approver", "operator")


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("accounts", "User")
    groups = [Group.objects.get_or_create(name=role)[0] for role in ROLES]
    for user in User.objects.filter(is_staff=True, is_superuser=False):
        user.groups.add(*groups)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
