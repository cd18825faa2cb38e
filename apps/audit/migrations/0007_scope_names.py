"""Entries name the scope they are about; those from before, about a scope, name the default one."""

from django.db import migrations, models

from apps.scopes.upgrade import name_default_scope_in_audit


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0006_agent_labels_changed_action'),
        ('scopes', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditentry',
            name='application',
            field=models.CharField(blank=True, db_index=True, max_length=63),
        ),
        migrations.AddField(
            model_name='auditentry',
            name='environment',
            field=models.CharField(blank=True, db_index=True, max_length=63),
        ),
        migrations.AlterField(
            model_name='auditentry',
            name='action',
            field=models.CharField(choices=[('login.succeeded', 'Login succeeded'), ('login.failed', 'Login failed'), ('token.refreshed', 'Token refreshed'), ('config.created', 'Config created'), ('config.updated', 'Config updated'), ('config.rolled_back', 'Config rolled back'), ('registration_token.issued', 'Registration token issued'), ('agent.registered', 'Agent registered'), ('agent.revoked', 'Agent revoked'), ('agent.labels_changed', 'Agent labels changed'), ('rollout.started', 'Rollout started'), ('rollout.wave_started', 'Rollout wave started'), ('rollout.promoted', 'Rollout promoted'), ('rollout.paused', 'Rollout paused'), ('rollout.resumed', 'Rollout resumed'), ('rollout.completed', 'Rollout completed'), ('rollout.aborted', 'Rollout aborted'), ('rollout.halted', 'Rollout halted by its failure rate'), ('config.preflight_refused', 'Publish refused by its pre-flight'), ('admin.added', 'Added in the admin'), ('admin.changed', 'Changed in the admin'), ('admin.deleted', 'Deleted in the admin'), ('roles.changed', 'Roles changed'), ('change.proposed', 'Change proposed'), ('change.approved', 'Change approved'), ('change.rejected', 'Change rejected'), ('change.cancelled', 'Change cancelled'), ('change.stale', 'Change went stale'), ('config.emergency', 'Emergency publish'), ('application.created', 'Application created'), ('application.changed', 'Application changed'), ('environment.created', 'Environment created'), ('environment.changed', 'Environment changed')], db_index=True, max_length=40),
        ),
        migrations.RunPython(name_default_scope_in_audit, migrations.RunPython.noop),
    ]
