from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from apps.accounts.api_tokens import TokenRefused, issue_api_token, revoke_api_token
from apps.accounts.models import ApiToken, ScopedRole, User
from apps.accounts.roles import ANY_ROLE, ROLE_DESCRIPTIONS, ROLES, role_needed_message
from apps.accounts.services import grant_scoped_role, set_roles, take_scoped_role
from apps.scopes.models import Application, Environment
from controller_site.admin_site import HistoryAdmin
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


class IssueApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it: `deploy-payments`, say.")
    role = forms.ChoiceField(
        choices=[(role, f"{role}: {ROLE_DESCRIPTIONS[role]}") for role in ROLES]
    )
    application = forms.ModelChoiceField(
        queryset=Application.objects.order_by("name"),
        required=False,
        help_text="Empty: every application.",
    )
    environment = forms.ModelChoiceField(
        queryset=Environment.objects.order_by("order", "name"),
        required=False,
        help_text="Empty: every environment.",
    )
    expires_at = forms.DateTimeField(
        required=False, help_text="At most a year ahead; in 90 days when left empty."
    )


class OwnTokensChangeList(ChangeList):
    """The list, and so what its actions act on: the caller's own tokens, or a superuser's
    everyone's."""

    def get_queryset(self, request, exclude_parameters=None):
        tokens = (
            super()
            .get_queryset(request, exclude_parameters)
            .select_related("user", "application", "environment")
        )
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)


@admin.register(ApiToken)
class ApiTokenAdmin(HistoryAdmin):
    """A person's own tokens (a superuser's list holds everyone's): made on their own page,
    which shows the secret once (never on the add page), and revoked by an action; never
    edited or deleted, so that the audit log's "token NAME of USER" can always be looked up."""

    list_display = [
        "name",
        "user",
        "role",
        "scope_label",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["role"]
    exclude = ["token_hash"]
    readonly_fields = [field.name for field in ApiToken._meta.fields if field.name != "token_hash"]
    actions = ["revoke_api_tokens"]
    change_list_template = "admin/accounts/apitoken/change_list.html"

    def get_changelist(self, request, **kwargs):
        return OwnTokensChangeList

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.user_id != request.user.pk and not request.user.is_superuser:
            return False
        return super().has_view_permission(request, obj)

    def has_revoke_permission(self, request) -> bool:
        return self.has_view_permission(request)

    def get_urls(self):
        issue = self.admin_site.admin_view(self.issue_view)
        return [path("issue/", issue, name="accounts_apitoken_issue"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        extra = {"can_issue": self.has_view_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def issue_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied(role_needed_message(ANY_ROLE))
        form = IssueApiTokenForm(request.POST or None)
        token = secret = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                token, secret = issue_api_token(
                    creator=request.user,
                    user=request.user,
                    name=data["name"],
                    role=data["role"],
                    application=data["application"],
                    environment=data["environment"],
                    expires_at=data["expires_at"],
                    source_ip=client_ip(request),
                )
            except TokenRefused as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, "API token made. Copy it now.", messages.SUCCESS)
        context = {
            **self.admin_site.each_context(request),
            "title": "Make an API token",
            "opts": self.model._meta,
            "form": form,
            "token": token,
            "secret": secret,
        }
        # The admin view wrapper marks the answer never-cache: the secret is not kept.
        return TemplateResponse(request, "admin/accounts/apitoken/issue.html", context)

    @admin.action(description="Revoke selected API tokens", permissions=["revoke"])
    def revoke_api_tokens(self, request, queryset):
        # The queryset is the caller's own tokens (OwnTokensChangeList), or any for a superuser.
        tokens = list(queryset.filter(revoked_at__isnull=True).select_related("user"))
        for token in tokens:
            revoke_api_token(token, actor=request.user, source_ip=client_ip(request))
        self.message_user(request, f"Revoked {len(tokens)} API token(s).", messages.SUCCESS)
