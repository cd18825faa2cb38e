from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.contrib.auth.models import Group

from apps.accounts.models import ScopedRole, User
from apps.accounts.roles import ROLE_DESCRIPTIONS, ROLES
from apps.accounts.services import grant_scoped_role, set_roles, take_scoped_role
from controller_site.request_info import client_ip

# The roles are fixed groups whose powers are defined in code (apps.accounts.roles); editing a
# group's permissions here would change nothing, so the page is not offered.
admin.site.unregister(Group)


class RolesField(forms.MultipleChoiceField):
    def __init__(self, **kwargs) -> None:
        super().__init__(
            choices=[(role, f"{role}: {ROLE_DESCRIPTIONS[role]}") for role in ROLES],
            widget=forms.CheckboxSelectMultiple,
            required=False,
            help_text="A user with a role may sign in here; one with none may log in and do "
            "nothing. Superusers may do everything whatever their roles.",
            **kwargs,
        )


class EmailUserCreationForm(UserCreationForm):
    roles = RolesField()

    class Meta:
        model = User
        fields = ("email",)


class EmailUserChangeForm(UserChangeForm):
    roles = RolesField()

    class Meta:
        model = User
        fields = ("email",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["roles"] = [
                role for role in ROLES if self.instance.groups.filter(name=role).exists()
            ]


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    ordering = ["email"]
    list_display = ["email", "role_list", "is_superuser", "is_active", "created_at", "last_login"]
    list_filter = ["groups__name", "is_superuser", "is_active"]
    search_fields = ["email"]
    readonly_fields = ["is_staff", "created_at", "last_login"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Roles", {"fields": ["roles", "is_superuser", "is_active", "is_staff"]}),
        ("Dates", {"fields": ["created_at", "last_login"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "password1", "password2", "roles"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="roles")
    def role_list(self, obj: User) -> str:
        if obj.is_superuser:
            return "superuser"
        names = {group.name for group in obj.groups.all()}
        return ", ".join(role for role in ROLES if role in names) or "—"

    def save_related(self, request, form, formsets, change) -> None:
        super().save_related(request, form, formsets, change)
        # Through the service, so the change is audited and admin access follows the roles.
        set_roles(
            form.instance,
            form.cleaned_data.get("roles", []),
            acting_user=request.user,
            source_ip=client_ip(request),
        )


@admin.register(ScopedRole)
class ScopedRoleAdmin(admin.ModelAdmin):
    """Roles held in part of the fleet: given and taken by a superuser through the audited
    services, like the roles held everywhere."""

    list_display = ["user", "role", "application", "environment", "granted_at"]
    list_filter = ["role", "application", "environment"]
    search_fields = ["user__email"]
    fields = ["user", "role", "application", "environment"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # taken away and given again, so that each is audited as a whole

    def save_model(self, request, obj, form, change) -> None:
        grant_scoped_role(
            obj.user,
            obj.role,
            application=obj.application,
            environment=obj.environment,
            acting_user=request.user,
            source_ip=client_ip(request),
        )
        obj.pk = (
            ScopedRole.objects.filter(
                user=obj.user,
                role=obj.role,
                application=obj.application,
                environment=obj.environment,
            )
            .values_list("pk", flat=True)
            .first()
        )

    def delete_model(self, request, obj) -> None:
        take_scoped_role(obj, acting_user=request.user, source_ip=client_ip(request))

    def delete_queryset(self, request, queryset) -> None:
        for grant in queryset:
            take_scoped_role(grant, acting_user=request.user, source_ip=client_ip(request))
