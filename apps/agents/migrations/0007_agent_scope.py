"""Every agent serves a scope: those from before serve the default scope."""

import django.db.models.deletion
from django.db import migrations, models

import apps.scopes.services
from apps.scopes.upgrade import move_to_default_scope


class Migration(migrations.Migration):
    dependencies = [
        ("scopes", "0001_initial"),
        ("agents", "0006_operator_labels"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="scope",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="scopes.scope",
            ),
        ),
        migrations.RunPython(move_to_default_scope("agents", "Agent"), migrations.RunPython.noop),
        # Not null first, then the default: a default given while the column turns not null
        # would be computed from today's models, which a later migration may have outgrown.
        migrations.AlterField(
            model_name="agent",
            name="scope",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to="scopes.scope"
            ),
        ),
        migrations.AlterField(
            model_name="agent",
            name="scope",
            field=models.ForeignKey(
                default=apps.scopes.services.default_scope_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="scopes.scope",
            ),
        ),
    ]
