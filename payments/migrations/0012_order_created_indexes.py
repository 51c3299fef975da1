from django.db import migrations, models

from payments.migration_operations import AddIndexConcurrently


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction; orders keep being written meanwhile.
    atomic = False

    dependencies = [
        ('payments', '0011_sales_staff_scope_translations'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='order',
            index=models.Index(fields=['created_at'], name='order_created'),
        ),
        AddIndexConcurrently(
            model_name='order',
            index=models.Index(fields=['merchant', 'created_at'], name='order_merchant_created'),
        ),
    ]
