"""`manage.py show_config`: every effective setting, its value and the layer it came from."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from coffee_payment.conf import settings as conf


class Command(BaseCommand):
    help = "Print the effective server and Django settings with their source; secrets masked."

    def handle(self, *args: Any, **options: Any) -> None:
        rows = [("setting", "value", "source"), *conf.report()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for key, value, source in rows:
            self.stdout.write(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip())
