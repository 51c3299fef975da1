#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffee_payment.settings")
    from coffee_payment.conf import ConfigError

    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        if sys.argv[1:2] == ["show_config"] and exc.rows:
            # Only required variables are missing: show everything else, and which ones.
            from coffee_payment.management.commands.show_config import config_table

            print("\n".join(config_table(exc.rows)))
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
