import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0004_ended_sessions'),
        ('scopes', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='ScopedRole',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('role', models.CharField(choices=[('viewer', 'viewer'), ('editor', 'editor'), ('approver', 'approver'), ('operator', 'operator')], max_length=16)),
                ('granted_at', models.DateTimeField(auto_now_add=True)),
                ('application', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='scopes.application')),
                ('environment', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='scopes.environment')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='scoped_roles', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'db_table': 'scoped_role',
                'ordering': ['user', 'role'],
                'constraints': [models.CheckConstraint(condition=models.Q(('application__isnull', False), ('environment__isnull', False), _connector='OR'), name='scoped_role_names_a_scope')],
            },
        ),
    ]
