"""Versions are numbered per scope: those from before are the default scope's."""

import django.db.models.deletion
from django.db import migrations, models

import apps.scopes.services
from apps.scopes.upgrade import move_to_default_scope


class Migration(migrations.Migration):
    dependencies = [
        ("scopes", "0001_initial"),
        ("configs", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="configversion",
            name="scope",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="scopes.scope",
            ),
        ),
        migrations.RunPython(move_to_default_scope("configs", "ConfigVersion"), migrations.RunPython.noop),
        # Not null first, then the default: a default given while the column turns not null
        # would be computed from today's models, which a later migration may have outgrown.
        migrations.AlterField(
            model_name="configversion",
            name="scope",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to="scopes.scope"
            ),
        ),
        migrations.AlterField(
            model_name="configversion",
            name="scope",
            field=models.ForeignKey(
                default=apps.scopes.services.default_scope_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="scopes.scope",
            ),
        ),
        migrations.AlterField(
            model_name="configversion",
            name="version",
            field=models.PositiveIntegerField(),
        ),
        migrations.AddConstraint(
            model_name="configversion",
            constraint=models.UniqueConstraint(
                fields=("scope", "version"), name="config_version_per_scope"
            ),
        ),
    ]
