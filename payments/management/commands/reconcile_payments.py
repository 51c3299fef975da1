"""`manage.py reconcile_payments`: settle with the provider what notifications and crashes left open.

What it does and why it is safe to run anywhere, any time, twice at once: payments.reconciliation;
it also runs the vend window check that every server worker runs (payments.vend_window).
It prints one line per outcome (`paid 3`, `released 1`, `purged 12`, `orphan refunded 1`) and exits 0
when every due order was handled, 1 when some provider call failed (the next run retries them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from collections import Counter
from typing import Any

from asgiref.sync import sync_to_async
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from payments import events, provider
from payments.models import EventCause
from payments.reconciliation import BATCH, orders_reconcile
from payments.vend_window import make_windows_check

log = logging.getLogger(__name__)

# A run handles at most this many orders by default: bounded, so it ends within the CronJob's
# deadline; what is left is due in the next run.
DEFAULT_LIMIT = 1000


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of orders (allowed: 1..100000)")
    return int(text)


class Command(BaseCommand):
    help = "Re-read unsettled orders from the payment provider; capture, release or refund what is due."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="most orders to handle in this run")
        parser.add_argument("--batch", type=_positive, default=BATCH, help="orders claimed at a time")

    def handle(self, *args: Any, **options: Any) -> None:
        outcomes = asyncio.run(self._run(limit=options["limit"], batch=options["batch"]))
        for outcome, count in sorted(outcomes.items()):
            self.stdout.write(f"{outcome} {count}")
        if not outcomes:
            self.stdout.write("nothing due")
        errors = sum(count for outcome, count in outcomes.items() if outcome.startswith("error"))
        if errors:
            raise CommandError(f"{errors} order(s) or payment lists could not be reconciled; the next run retries")

    async def _run(self, *, limit: int, batch: int) -> Counter[str]:
        # Every order event the run writes names it (the admin's event log); its log lines too.
        run_id = uuid.uuid4().hex
        log.info("reconciliation run %s", run_id)
        try:
            with events.caused_by(EventCause.RECONCILIATION, run_id):
                outcomes = await make_windows_check()
                outcomes.update(await orders_reconcile(limit=limit, batch=batch))
            return outcomes
        finally:
            await provider.aclose()
            # The ORM ran in asgiref's sync thread: close its connections there, not in this one.
            await sync_to_async(connections.close_all)()
