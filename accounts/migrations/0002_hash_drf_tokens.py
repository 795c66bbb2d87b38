"""Existing DRF tokens (``rest_framework.authtoken``'s ``authtoken_token``, plain-text keys)
become hashed ApiTokens, so the scripts that use them keep working until they expire
(``API_TOKEN_TTL_SECONDS`` after this migration); the plain-text keys are then deleted.

The authtoken app is no longer installed, so its table is read with plain SQL when it exists
(a database created before this version); a new database has none and nothing happens.
"""

import datetime
import hashlib

from django.conf import settings
from django.db import migrations
from django.utils import timezone
from django.utils.dateparse import parse_datetime

DRF_TABLE = "authtoken_token"


def _aware(value):
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is None:
        return timezone.now()
    return timezone.make_aware(value, datetime.UTC) if timezone.is_naive(value) else value


def hash_drf_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if DRF_TABLE not in connection.introspection.table_names():
        return
    table = connection.ops.quote_name(DRF_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT "key", "user_id", "created" FROM {table}')
        rows = cursor.fetchall()
    ApiToken = apps.get_model("accounts", "ApiToken")
    expires = timezone.now() + datetime.timedelta(seconds=settings.API_TOKEN_TTL_SECONDS)
    ApiToken.objects.bulk_create(
        [
            ApiToken(
                user_id=user_id,
                key_hash=hashlib.sha256(key.encode()).hexdigest(),
                prefix=key[:8],
                created_at=_aware(created),
                expires_at=expires,
            )
            for key, user_id, created in rows
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]

    operations = [migrations.RunPython(hash_drf_tokens, migrations.RunPython.noop)]
