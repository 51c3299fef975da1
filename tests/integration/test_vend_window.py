"""The vend window and machine liveness on real processes: Gunicorn's workers close the window of a
paid order no machine started, within the bound the server's own settings give, with no request
asking them to; a machine that stops calling gets its scans refused."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from coffee_payment.conf import load_settings
from devtools import postgres
from devtools.processes import BIN, base_environ, fake_provider, gunicorn, run
from tests.integration.test_payment_flow import SECRETS, csrf, server_environ, wait_for_status

# On both passes: the check runs in each worker beside the requests, on the pool of PostgreSQL too.
pytestmark = [pytest.mark.integration, pytest.mark.database, pytest.mark.timeout(150)]

LOBBY = "deviceUuid=demo-machine-lobby&drinkNo=1&size=1"


def test_a_worker_returns_the_money_of_a_paid_order_no_machine_started(tmp_path: Path) -> None:
    """Scan, pay, and the machine never starts: refunded between the window's end and the window plus
    one check interval plus the provider calls' longest wait; a late start is then 409. The machine,
    silent since, is offline for the next scan once its silence passes DEVICE_OFFLINE_AFTER_SECONDS
    (plus the write interval); one call later it sells again."""
    with postgres.server_database(tmp_path) as url:
        port = base_environ(tmp_path)["GUNICORN_PORT"]
        webhook = f"http://127.0.0.1:{port}/v1/payments/webhook"
        with fake_provider(tmp_path, "--credentials", SECRETS, "--webhook-url", webhook) as provider:
            env = server_environ(tmp_path, url, provider.url, GUNICORN_PORT=port, GUNICORN_WORKERS="2",
                                 ORDER_MAKE_WINDOW_SECONDS="5", DEVICE_OFFLINE_AFTER_SECONDS="10")
            for command in (["migrate", "--noinput"], ["seed_demo", "--machine-tokens"]):
                result = run([str(BIN / "python"), "manage.py", *command], env=env)
                assert result.returncode == 0, result.stderr
            token = re.search(r"^device demo-machine-lobby: machine API token (\S+)$", result.stdout, flags=re.MULTILINE)
            assert token, result.stdout
            loaded = load_settings(environ=env)
            window = loaded.order_make_window_seconds
            provider_wait = (1 + loaded.provider.retries) * (loaded.provider.connect_timeout + loaded.provider.read_timeout)
            bound = window + loaded.order_make_window_check_seconds + provider_wait
            silence = loaded.device_offline_after_seconds + loaded.device_seen_interval_seconds
            machine = {"Authorization": f"Bearer {token.group(1)}"}
            with gunicorn(tmp_path, env=env) as server, httpx.Client(base_url=server.url, timeout=10) as http:
                order_id = "vend-window-1"
                # The machine shows the QR code and polls for its order: it is seen.
                assert http.get(f"/v1/machine/orders/{order_id}", headers=machine).status_code == 404
                page = http.get(f"/v1/pay?{LOBBY}&orderId={order_id}")
                assert page.status_code == 200, page.text
                pay = http.post(f"/v1/orders/{order_id}/payment", **csrf(page))  # type: ignore[arg-type]
                assert pay.status_code == 303, pay.text
                assert http.post(pay.headers["location"], data={"action": "succeed"}).status_code == 303
                wait_for_status(server, order_id, "paid")
                paid_seen = time.monotonic()
                shown = http.get(f"/v1/machine/orders/{order_id}", headers=machine).json()
                last_call = time.monotonic()
                assert (shown["status"], shown["can_make"]) == ("paid", True)

                wait_for_status(server, order_id, "refunded", timeout=bound + 1)
                closed_after = time.monotonic() - paid_seen
                # Paid a poll (0.2 s) or so before it was seen paid; refunded within the bound.
                assert window - 1 <= closed_after <= bound, (closed_after, bound, server.logs())
                late = http.post(f"/v1/machine/orders/{order_id}/report", json={"outcome": "make_pending"},
                                 headers=machine)
                last_call = time.monotonic()
                assert (late.status_code, late.json()["reason"], late.json()["status"]) == (
                    409, "make_window_closed", "refunded"), late.text
                assert "/refunds" in provider.logs()

                # Silent past the limit (from its last call): the next scan is refused, nothing written.
                time.sleep(max(0.0, last_call + silence - time.monotonic()))
                refused = http.get(f"/v1/pay?{LOBBY}&orderId=vend-window-2", headers={"Accept-Language": "ru"})
                assert refused.status_code == 409 and "Эта кофемашина не на связи" in refused.text
                samples = httpx.get(server.metrics_url, timeout=10).text
                assert 'coffee_machines{connection="offline",status="online"} 1.0' in samples
                assert http.get("/v1/machine/orders/vend-window-2", headers=machine).status_code == 404
                assert http.get(f"/v1/pay?{LOBBY}&orderId=vend-window-2").status_code == 200
                assert "Traceback" not in server.logs()
