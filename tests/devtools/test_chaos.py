"""The chaos run's judges, on made-up runs: the ledger finds each kind of lost money, the request
judge excuses only the requests a worker's SIGKILL cut and the 503s a fault explains, the schedule
is the seed's and covers every kind. The run itself: tests/integration/test_chaos.py."""

from __future__ import annotations

import os
import random
import socket
from typing import Any

import pytest

from devtools.chaos import exchanges_judge, main, runs_judge
from devtools.chaos_actors import OrderRecord
from devtools.chaos_faults import (API_KINDS, EVERY, KINDS, NOTIFICATION_KINDS, Kill, ReconcileRun, Window, client_ports,
                                   schedule_build)
from devtools.chaos_http import Exchange
from devtools.chaos_ledger import ledger_check


def payment(pid: str, order_id: str, status: str = "succeeded", rubles: str = "99.00") -> dict[str, Any]:
    return {"id": pid, "status": status, "amount": {"value": rubles, "currency": "RUB"}, "metadata": {"order_id": order_id}}


def refund(pid: str, rubles: str = "99.00", status: str = "succeeded") -> dict[str, Any]:
    return {"id": f"r-{pid}", "payment_id": pid, "status": status, "amount": {"value": rubles, "currency": "RUB"}}


def order(order_id: str, status: str, pid: str | None, *, overdue: bool = False) -> dict[str, Any]:
    return {"id": order_id, "status": status, "price_kopecks": 9900, "provider_payment_id": pid, "make_overdue": overdue}


def record(order_id: str, machine: str = "makes", **done: Any) -> OrderRecord:
    return OrderRecord(order_id=order_id, machine_index=0, customer="pays", machine=machine, **done)


def check(payments: list[dict[str, Any]], orders: list[dict[str, Any]], *, refunds: list[dict[str, Any]] = (),
          orphans: list[dict[str, Any]] = (), records: list[OrderRecord] = ()) -> list[str]:
    ledger = ledger_check(payments=payments, refunds=list(refunds), database={"orders": orders, "orphans": list(orphans)},
                          records={r.order_id: r for r in records})
    return ledger.violations


def test_a_settled_run_whose_money_is_all_accounted_for_has_no_violation() -> None:
    violations = check(
        [payment("p1", "o1"), payment("p2", "o2"), payment("p3", "o3", "canceled"), payment("p4", "o4", "pending"),
         payment("p5", "o5"), payment("p6", "o6", "canceled")],
        [order("o1", "successful", "p1"), order("o2", "refunded", "p2"), order("o3", "released", "p3"),
         order("o4", "pending", "p4"), order("o5", "make_pending", "p5", overdue=True), order("o6", "created", None)],
        refunds=[refund("p2")], records=[record("o1", made=True), record("o5", "silent_after_start", started=True)],
    )
    assert violations == []


@pytest.mark.parametrize(("payments", "orders", "extra", "violation"), [
    ([payment("p1", "o1")], [order("o1", "refunded", "p1")], {}, "o1 is refunded: 9900 kopecks taken for no drink"),
    ([payment("p1", "o1")], [order("o1", "successful", "p1")], {"refunds": [refund("p1", "50.00")]},
     "o1 is successful but 4900 of 9900 kopecks"),
    ([payment("p1", "o1", "waiting_for_capture")], [order("o1", "released", "p1")], {}, "hold is still on the card"),
    ([payment("p1", "o1"), payment("p2", "o1")], [order("o1", "successful", "p1")], {}, "o1 paid twice"),
    ([payment("p2", "o9")], [], {}, "p2 (succeeded, 9900 kopecks kept) belongs to no order"),
    ([payment("p1", "o1")], [order("o1", "make_pending", "p1", overdue=True)], {"records": [record("o1")]},
     "o1 went to the staff (make_pending) without the schedule forcing it"),
    ([payment("p1", "o1")], [order("o1", "refund_failed", "p1")], {"records": [record("o1")]}, "without the schedule"),
    ([payment("p1", "o1", "canceled")], [order("o1", "failed", "p1")], {"records": [record("o1", made=True)]},
     "o1: the machine was told its drink was made, the order is failed"),
    ([payment("p1", "o1")], [order("o1", "created", None)],
     {"orphans": [{"provider_payment_id": "p1", "status": "return_pending"}]}, "orphan payment p1 (order o1) is return_pending"),
    ([], [order("o1", "pending", "p1")], {}, "o1 records payment p1, which the provider does not have"),
    ([payment("p1", "o1")], [order("o1", "refunded", "p1")], {"refunds": [refund("p1", status="pending")]},
     "refund r-p1 of payment p1 is still pending"),
])
def test_the_ledger_names_each_kind_of_money_lost(payments: list[dict[str, Any]], orders: list[dict[str, Any]],
                                                   extra: dict[str, Any], violation: str) -> None:
    violations = check(payments, orders, **extra)
    assert any(violation in line for line in violations), violations


def exchange(kind: str, started: float, ended: float, *, port: int = 5000, status: int | None = None) -> Exchange:
    return Exchange(kind=kind, started=started, ended=ended, port=port, status=status,
                    error=None if status else "ConnectionResetError")


def test_only_a_kill_of_its_own_connection_excuses_a_request_without_an_answer() -> None:
    kills = [Kill(stopped=10.0, killed=10.01, pid=1, ports=frozenset({5000}))]
    answers, cut, violations = exchanges_judge(
        [exchange("pay", 9.0, 10.02), exchange("pay", 9.0, 10.02, port=5001), exchange("pay", 11.0, 11.5),
         exchange("scan", 1.0, 1.1, status=200)],
        kills=kills, windows=[], tail={})
    assert (cut, answers) == (1, {"scan 200": 1})
    assert [line.split(" got")[0] for line in violations] == ["pay request (client port 5001)",
                                                              "pay request (client port 5000)"]


def test_a_503_is_excused_only_by_a_fault_on_meanwhile_or_just_before() -> None:
    windows = [Window("postgres_restart", 10.0, 11.0)]
    _, _, violations = exchanges_judge(
        [exchange("status-poll", 9.0, 10.5, status=503), exchange("status-poll", 13.9, 14.0, status=503),
         exchange("status-poll", 14.5, 15.0, status=503), exchange("pay", 10.0, 10.5, status=500),
         exchange("machine-poll", 1.0, 1.1, status=400)],
        kills=[], windows=windows, tail={"postgres_restart": 3.0})
    assert [line.split(" request")[0] + line.split("answered")[1][:4] for line in violations] == [
        "status-poll 503", "pay 500", "machine-poll 400"]


def test_the_schedule_is_the_seeds_and_deals_every_kind_of_a_family_before_any_twice() -> None:
    def build(seed: int, seconds: float = 40) -> list[Any]:
        return schedule_build(random.Random(seed), seconds=seconds, machines=6, read_timeout=2.0, silence=30.0)

    assert build(1) == build(1) != build(2)
    for seed in range(20):
        faults = build(seed)
        assert [f.at for f in faults] == sorted(f.at for f in faults) and all(0 <= f.at <= 40 for f in faults)
        for family in (API_KINDS, NOTIFICATION_KINDS):
            periods = [f for f in faults if f.kind in family]
            assert all(a.at + a.seconds <= b.at for a, b in zip(periods, periods[1:]))  # never overlapping
            dealt = [f.kind for f in periods[:len(family)]]
            assert len(set(dealt)) == len(dealt)
        for kind, every in EVERY.items():
            assert sum(f.kind == kind for f in faults) == max(1, round(40 / every))
    assert {f.kind for seed in range(5) for f in build(seed, 120)} == set(KINDS)


def test_the_ports_of_a_processes_connections_are_read_from_proc() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert client.getsockname()[1] in client_ports(os.getpid(), port)
        assert client_ports(os.getpid(), port) == frozenset()


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--workers", "9"], ["--machines", "x"], ["--orders", "-1"]])
def test_a_bad_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_a_reconciliation_run_may_fail_during_the_faults_and_die_only_of_a_restart_under_it() -> None:
    def ran(returncode: int | None, stderr: str = "", *, during: bool = True, at: float = 10.0) -> ReconcileRun:
        return ReconcileRun("manage.py reconcile_payments", returncode, "", stderr, during, at, at + 2)

    died = "Traceback (most recent call last):\n  ...\ndjango.db.utils.OperationalError: the connection is closed"
    cut, violations = runs_judge(
        [ran(0), ran(1, "1 order(s) or payment lists could not be reconciled"), ran(1, died),
         ran(1, died, at=30.0), ran(1, during=False), ran(None), ran(1, "Traceback ...\nKeyError: 'x'")],
        restarts=[Window("postgres_restart", 11.0, 11.5)], tail=5.0)
    assert cut == 1
    assert [line.split(":")[0] for line in violations] == [
        "`manage.py reconcile_payments` exited 1 (during the faults)", "`manage.py reconcile_payments` exited 1",
        "`manage.py reconcile_payments` exited None (during the faults)",
        "`manage.py reconcile_payments` exited 1 (during the faults)"]
