import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def make_default_scope(apps, schema_editor):
    """The scope the seed's routes act on, and where a controller's data from before goes."""
    Application = apps.get_model("scopes", "Application")
    Environment = apps.get_model("scopes", "Environment")
    Scope = apps.get_model("scopes", "Scope")
    application, _ = Application.objects.get_or_create(name=settings.DEFAULT_APPLICATION)
    environment, _ = Environment.objects.get_or_create(
        name=settings.DEFAULT_ENVIRONMENT,
        defaults={"approvals_required": settings.CONFIG_APPROVALS_REQUIRED},
    )
    Scope.objects.get_or_create(application=application, environment=environment)


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='Application',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=63, unique=True, validators=[django.core.validators.RegexValidator('^[a-z0-9][a-z0-9-]{0,62}$', 'Use 1-63 characters of a-z, 0-9 and -, starting with a letter or a digit.')])),
                ('description', models.CharField(blank=True, max_length=500)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'db_table': 'application',
                'ordering': ['name'],
            },
        ),
        migrations.CreateModel(
            name='Environment',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=63, unique=True, validators=[django.core.validators.RegexValidator('^[a-z0-9][a-z0-9-]{0,62}$', 'Use 1-63 characters of a-z, 0-9 and -, starting with a letter or a digit.')])),
                ('order', models.IntegerField(default=0)),
                ('approvals_required', models.PositiveSmallIntegerField(default=0)),
                ('default_rollout', models.JSONField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'db_table': 'environment',
                'ordering': ['order', 'name'],
            },
        ),
        migrations.CreateModel(
            name='Scope',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('application', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='scopes', to='scopes.application')),
                ('environment', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='scopes', to='scopes.environment')),
            ],
            options={
                'db_table': 'scope',
                'ordering': ['application__name', 'environment__order', 'environment__name'],
                'constraints': [models.UniqueConstraint(fields=('application', 'environment'), name='one_scope_per_application_env')],
            },
        ),
        migrations.RunPython(make_default_scope, migrations.RunPython.noop),
    ]
