"""Prometheus metrics of the payments app: payments and refunds by outcome, provider calls.

Reported by the project's `/metrics` (coffee_payment/metrics.py), with the counts that
payments/scrape_metrics.py reads from the database at each scrape. Every label value comes from
the code: order statuses, operation names, outcome kinds.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PAYMENTS = Counter(
    "coffee_payments_total",
    "Payments by outcome: started (the customer was sent to the provider), or the order status the "
    "provider's answer moved the order to (paid, held, not_paid, released, successful, failed, refund_pending).",
    ["outcome"],
)
REFUNDS = Counter(
    "coffee_refunds_total", "Refunds by outcome: requested, refunded or refund_failed.", ["outcome"]
)
MAKE_WINDOWS_CLOSED = Counter(
    "coffee_make_windows_closed_total",
    "Paid orders the machine did not start within ORDER_MAKE_WINDOW_SECONDS, their money returned, by "
    "stage: single_stage (refunded) or two_stage (released).",
    ["stage"],
)
# Seconds, up to the provider read timeout's range; each attempt (a retry is a call of its own).
PROVIDER_DURATION = Histogram(
    "coffee_provider_request_duration_seconds",
    "Payment provider calls (each attempt), by operation and result: the HTTP status class or error.",
    ["operation", "result"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PROVIDER_ERRORS = Counter(
    "coffee_provider_errors_total",
    "Payment provider call attempts that failed, by operation and kind (ConnectTimeout, ReadTimeout, "
    "ConnectError, http_5xx, http_429, ...).",
    ["operation", "kind"],
)
# The status poll's and the return page's own re-reads of pending payments (the notification's
# fallback): applied (the order moved on), unchanged, unanswered (timeout, 5xx, the budget), refused.
PAYMENT_RECHECKS = Counter(
    "coffee_payment_rechecks_total",
    "Re-reads of a pending order's payment by its status poll or return page, by result: applied, unchanged, "
    "unanswered (no answer within the budget) or refused.",
    ["result"],
)
# Payments whose order never recorded them (the worker died after the provider answered), found by
# reconciliation's listing: attached to their order, or their money returned (refunded, released)
# or the return refused (return_failed: the staff's, one error logged).
ORPHAN_PAYMENTS = Counter(
    "coffee_orphan_payments_total",
    "Provider payments their order never recorded, by outcome: attached, refunded, released or return_failed.",
    ["outcome"],
)

NOTIFICATIONS_DEFERRED = Counter(
    "coffee_notifications_deferred_total",
    "Provider notifications answered 429 instead of read from the provider (payments/notification_limits.py), by "
    "reason: reread (the same claim was read moments ago and said otherwise), unknown_ids (the per-minute cap of "
    "reads for ids no order holds).",
    ["reason"],
)
