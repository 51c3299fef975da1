"""`manage.py show_config`: every effective setting, its value and the layer it came from.

With required variables missing, manage.py prints the same table, each missing one marked MISSING.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand


def config_table(rows: list[tuple[str, str, str]]) -> list[str]:
    rows = [("setting", "value", "source"), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return [f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip() for key, value, source in rows]


class Command(BaseCommand):
    help = "Print the effective server and Django settings with their source; secrets masked."

    def handle(self, *args: Any, **options: Any) -> None:
        from coffee_payment.conf import settings as conf

        for line in config_table(conf.report()):
            self.stdout.write(line)
