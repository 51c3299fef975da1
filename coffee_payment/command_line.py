"""manage.py's run: a configuration error or a database it cannot reach is one line and exit status 1.

A command is one process doing one thing, so it connects without the workers' pool: an unreachable
PostgreSQL then fails at libpq's connect timeout with libpq's own reason, not after the pool's wait
with only "couldn't get a connection" and a warning per retry.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from coffee_payment.conf_values import SQLITE, mask_database_url


def database_unreachable(database: Mapping[str, Any], *, url: str, error: BaseException) -> str:
    """The one line for a connection that failed: where, as whom, why, and what to check."""
    reason = " ".join(str(error).split()) or type(error).__name__
    shown = mask_database_url(url)
    if database["ENGINE"] == SQLITE:
        return (f"database error: cannot open the SQLite database {database['NAME']} (DATABASE_URL={shown!r}): "
                f"{reason}; check that its directory exists and is writable")
    return (f"database error: cannot connect to PostgreSQL at {database.get('HOST') or 'localhost'}:"
            f"{database.get('PORT') or 5432}, database {database.get('NAME')!r} as {database.get('USER')!r} "
            f"(DATABASE_URL={shown!r}): {reason}; check that the server runs, accepts connections from this "
            "host, and that DATABASE_URL names it")


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")
    from django.core.management import execute_from_command_line
    from django.db import OperationalError, connections

    from coffee_payment.conf import ConfigError

    try:
        from django.conf import settings

        for database in settings.DATABASES.values():
            database.get("OPTIONS", {}).pop("pool", None)
        execute_from_command_line(argv)
    except ConfigError as exc:
        if argv[1:2] == ["show_config"] and exc.rows:
            # Only required variables are missing: show everything else, and which ones.
            from coffee_payment.management.commands.show_config import config_table

            print("\n".join(config_table(exc.rows)))
        sys.exit(f"configuration error: {exc}")
    except OperationalError as exc:
        default = connections["default"]
        if default.connection is not None:  # it failed later, not while connecting: show it all
            raise
        from coffee_payment.conf import settings as conf

        sys.exit(database_unreachable(default.settings_dict, url=conf.database_url, error=exc))
