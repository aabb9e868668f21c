"""Keyed runs that wait for a person's approval (docs/runs.md §"Runs that wait for an approval"): the status
``waiting_approval``, the approval the run waits for and until when, and how many actions it had decided."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0012_plan_dispatch_slots'),
        ('idempotency', '0003_drop_redundant_fk_indexes'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='run',
            name='idempotency_run_status_valid',
        ),
        migrations.AddField(
            model_name='run',
            name='actions_done',
            field=models.PositiveIntegerField(default=0, help_text='Actions decided before the run last waited: it goes on from the next (result.actions).'),
        ),
        migrations.AddField(
            model_name='run',
            name='waiting_for',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name='run',
            name='waiting_until',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='run',
            name='status',
            field=models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('waiting_approval', 'Waiting for approval'), ('completed', 'Completed'), ('failed', 'Failed')], default='queued', max_length=16),
        ),
        migrations.AddIndex(
            model_name='run',
            index=models.Index(condition=models.Q(('status', 'waiting_approval')), fields=['waiting_for'], name='idempotency_run_waiting_for'),
        ),
        migrations.AddConstraint(
            model_name='run',
            constraint=models.CheckConstraint(condition=models.Q(('status__in', ['queued', 'running', 'waiting_approval', 'completed', 'failed'])), name='idempotency_run_status_valid'),
        ),
    ]
