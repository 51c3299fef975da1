"""The chaos run's ledger: every payment and refund the provider holds, read through its API as
each shop sees them, against the orders and orphan payments in the database once the run settled.

Violations (each naming its ids): a payment that belongs to no order, or to one twice; money taken
(captured, less what was refunded) that is not for a drink made and not returned in full; an order
paid twice; a hold still on the card; a drink the machine was told it made that was not charged; an
orphan payment not returned. Kept apart and listed, not violations: the staff's orders (started and
never reported, `make_overdue_at`; refund_failed; an orphan's return_failed), each one forced by the
schedule (a machine silent after starting, or one that never got its report answered), else a violation.
"""

from __future__ import annotations

import base64
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from devtools.chaos_actors import OrderRecord
from devtools.chaos_http import Client

MADE_STATUSES = frozenset({"successful", "manual_make"})
MACHINE_REPORTS = ("make_pending", "successful", "make_failed")
# The fake provider's lists: 100 a page, at most this many pages per shop.
PAGES_MAX = 1000


def _kopecks(amount: Mapping[str, str]) -> int:
    return int(Decimal(amount["value"]) * 100)


async def provider_objects(client: Client, *, api_url: str, shops: Mapping[str, str], what: str
                           ) -> list[dict[str, Any]]:
    """Every payment (what="payments") or refund of every shop, through the list API, page by page."""
    found: list[dict[str, Any]] = []
    for shop, secret in shops.items():
        auth = {"Authorization": "Basic " + base64.b64encode(f"{shop}:{secret}".encode()).decode()}
        cursor = ""
        for _page in range(PAGES_MAX):
            reply = await client.request("ledger", f"{api_url}/{what}?limit=100{cursor}", headers=auth)
            if reply is None or reply.status != 200:
                raise RuntimeError(f"the provider's {what} of {shop} could not be listed: {reply and reply.body[:200]!r}")
            page = reply.json()
            found += [{**item, "shop": shop} for item in page["items"]]
            if "next_cursor" not in page:
                break
            cursor = f"&cursor={page['next_cursor']}"
    return found


@dataclass
class Ledger:
    orders: Counter[str] = field(default_factory=Counter)  # final status -> orders
    payments: Counter[str] = field(default_factory=Counter)  # provider status -> payments
    refunds: Counter[str] = field(default_factory=Counter)
    taken_kopecks: int = 0  # captured and kept: the drinks' money
    returned_kopecks: int = 0  # refunded
    staff: list[str] = field(default_factory=list)
    unattached: list[str] = field(default_factory=list)  # payments no order recorded, nothing taken
    violations: list[str] = field(default_factory=list)


def ledger_check(*, payments: Sequence[dict[str, Any]], refunds: Sequence[dict[str, Any]],
                 database: Mapping[str, Any], records: Mapping[str, OrderRecord]) -> Ledger:
    ledger = Ledger()
    orders = {order["id"]: order for order in database["orders"]}
    orphans = {orphan["provider_payment_id"]: orphan for orphan in database["orphans"]}
    own = {order["provider_payment_id"]: order["id"] for order in orders.values() if order["provider_payment_id"]}
    refunded: Counter[str] = Counter()
    for refund in refunds:
        ledger.refunds[refund["status"]] += 1
        if refund["status"] == "succeeded":
            refunded[refund["payment_id"]] += _kopecks(refund["amount"])
        else:
            ledger.violations.append(f"refund {refund['id']} of payment {refund['payment_id']} is still {refund['status']}")
    kept_by_order: dict[str, list[tuple[str, int]]] = defaultdict(list)  # order -> (payment, kopecks kept)
    for payment in payments:
        pid, status = payment["id"], payment["status"]
        ledger.payments[status] += 1
        order_id = payment.get("metadata", {}).get("order_id", "")
        captured = _kopecks(payment["amount"]) if status == "succeeded" else 0
        kept = captured - refunded[pid]
        ledger.taken_kopecks += kept
        ledger.returned_kopecks += refunded[pid]
        if kept < 0:
            ledger.violations.append(f"payment {pid} (order {order_id}): refunded {refunded[pid]} kopecks of {captured}")
        if status == "waiting_for_capture":
            ledger.violations.append(f"payment {pid} (order {order_id}): its hold is still on the card")
        owners = [name for name, mine in (("its order", own.get(pid) == order_id), ("an orphan payment", pid in orphans))
                  if mine]
        if pid in own and own[pid] != order_id:
            ledger.violations.append(f"payment {pid} names order {order_id} but order {own[pid]} recorded it")
        if len(owners) > 1:
            ledger.violations.append(f"payment {pid} (order {order_id}) is both its order's and an orphan payment")
        if pid in orphans:
            orphan = orphans[pid]
            if orphan["status"] == "return_failed":
                ledger.staff.append(f"orphan payment {pid} (order {order_id}): return refused, staff return it")
                ledger.violations.append(f"orphan payment {pid} went to the staff without the schedule forcing it")
            elif orphan["status"] != "returned" or kept > 0:
                ledger.violations.append(f"orphan payment {pid} (order {order_id}) is {orphan['status']}, "
                                         f"{kept} kopecks kept")
        elif not owners:
            if kept > 0 or status == "waiting_for_capture":
                ledger.violations.append(f"payment {pid} ({status}, {kept} kopecks kept) belongs to no order "
                                         f"(metadata order {order_id!r})")
            else:
                ledger.unattached.append(f"{pid} ({status}, order {order_id})")
        if kept > 0:
            kept_by_order[order_id].append((pid, kept))
    known = {payment["id"] for payment in payments}
    for order_id, order in orders.items():
        status = order["status"]
        if order["provider_payment_id"] and order["provider_payment_id"] not in known:
            ledger.violations.append(f"order {order_id} records payment {order['provider_payment_id']}, "
                                     f"which the provider does not have")
        record = records.get(order_id)
        staff = order["make_overdue"] or status == "refund_failed"
        ledger.orders[f"{status} (staff)" if staff else status] += 1
        kept = kept_by_order.get(order_id, [])
        if len(kept) > 1:
            ledger.violations.append(f"order {order_id} paid twice: kopecks kept by payment {dict(kept)}")
        total = sum(kopecks for pid, kopecks in kept if pid == order["provider_payment_id"])
        if staff:
            ledger.staff.append(f"order {order_id}: {status}" + (", started, never reported" if order["make_overdue"] else "")
                                + f", {total} kopecks kept")
            # Only a start never followed by a report (by plan, or unanswered) sends an order to the
            # staff here: the fake provider refuses no refund or return the server asks for right.
            forced = order["make_overdue"] and record is not None and (
                record.machine == "silent_after_start" or set(record.unanswered) & set(MACHINE_REPORTS))
            if not forced:
                ledger.violations.append(f"order {order_id} went to the staff ({status}) without the schedule forcing it")
        elif status in MADE_STATUSES:
            if total != order["price_kopecks"]:
                ledger.violations.append(f"order {order_id} is {status} but {total} of {order['price_kopecks']} "
                                         f"kopecks were taken")
        elif total:
            ledger.violations.append(f"order {order_id} is {status}: {total} kopecks taken for no drink, not returned")
        if record is not None and record.made and status not in MADE_STATUSES:
            ledger.violations.append(f"order {order_id}: the machine was told its drink was made, the order is {status}")
    return ledger
