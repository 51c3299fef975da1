"""The back office on a 1280 x 800 laptop screen in a real browser (Debian's Chromium, as the customer
pages' walk drives it): a merchant's staff user logs in, and the orders list and the sales report
scroll only downwards, in English and in Russian. Runs in the SQLite pass of `make test` only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools import postgres
from devtools.processes import BIN, base_environ, gunicorn, run
from tests.integration.test_customer_browser import SQLITE_PASS_ONLY, chromium_session, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LAPTOP = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
USER, PASSWORD = "clerk", "clerk-password-1280"
# The demo fleet, a staff user of its merchant who may see its orders and sales, and a day of orders
# with the longest texts a list shows: machine-made ids, a location, a payment method, a contact.
SEED = f"""
import django; django.setup()
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from payments import services
from payments.models import Device, Merchant, Order
call_command("migrate", interactive=False, verbosity=0)
call_command("seed_demo", stdout=open("/dev/null", "w"))
clerk = User.objects.create_user({USER!r}, password={PASSWORD!r}, is_staff=True)
clerk.user_permissions.set(Permission.objects.filter(codename__in=["view_order", "view_sales", "view_device"]))
Merchant.objects.get(name="Demo Coffee").staff.add(clerk)
lobby = Device.objects.filter(device_uuid="demo-machine-lobby")
lobby.update(location="Бизнес-центр «Северная звезда», 3 этаж, у лифтов")
for number in range(12):
    order = services.order_create(order_id=f"20261207110122659ba6d7-9ace-cndn-{{number:02d}}",
                                  device_uuid="demo-machine-lobby", drink_number=2, size=2)
    Order.objects.filter(pk=order.pk).update(status="successful", payment_method="bank_card",
                                             customer_contact="ivan.petrov.long-address@example.ru")
"""
# Sideways scrolling of the page, and of the list inside it (the admin's .results scrolls on its own:
# overflow-x auto), with the boxes' and columns' widths to tell why.
OVERFLOW = """
const root = document.documentElement;
const results = [...document.querySelectorAll(".results")].map(box => box.scrollWidth - box.clientWidth);
const boxes = [...document.querySelectorAll("#nav-sidebar, #content, #changelist-filter, .results")]
  .map(box => `${box.id || box.className}: ${box.clientWidth} of ${box.scrollWidth}`);
const columns = [...document.querySelectorAll("#result_list thead th")]
  .map(th => `${th.textContent.trim().slice(0, 20)}: ${Math.round(th.getBoundingClientRect().width)}`);
return {lang: root.lang, window: window.innerWidth, scroll: root.scrollWidth, client: root.clientWidth,
        hidden: results, boxes: boxes, columns: columns};
"""
PAGES = {"orders list": "/admin/payments/order/", "sales report": "/admin/payments/sales/"}


def assert_no_sideways_scroll(browser: Any, page: str, language: str) -> None:
    layout = browser.execute_script(OVERFLOW)
    assert layout["lang"] == language and layout["window"] == LAPTOP["width"], f"{page}: {layout}"
    assert layout["scroll"] <= layout["client"], f"{page} ({language}) scrolls sideways: {layout}"
    assert layout["hidden"] and max(layout["hidden"]) <= 0, f"{page} ({language}): its list scrolls sideways: {layout}"


@SQLITE_PASS_ONLY
def test_staff_read_the_orders_and_sales_at_1280_px_in_both_languages(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with postgres.server_database(tmp_path) as database_url:
        env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_WORKERS="1")
        seeding = {**env, "DJANGO_SETTINGS_MODULE": "coffee_payment.settings"}
        result = run([str(BIN / "python"), "-c", SEED], env=seeding)
        assert result.returncode == 0, result.stderr
        with gunicorn(tmp_path, env=env) as server, chromium_session(tmp_path) as browser:
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", LAPTOP)
            browser.get(f"{server.url}/admin/login/?next=/admin/")
            browser.find_element(By.ID, "id_username").send_keys(USER)
            browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
            browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            wait_for(browser, "return document.getElementById('content-main') !== null"
                              " && location.pathname === '/admin/'")
            for language in ("en", "ru"):
                # Django's language cookie comes before the browser's Accept-Language.
                browser.add_cookie({"name": "django_language", "value": language, "path": "/"})
                for page, path in PAGES.items():
                    browser.get(f"{server.url}{path}")
                    rows = browser.find_element(By.CSS_SELECTOR, "#result_list tbody").text
                    assert "demo-machine-lobby" in rows, f"{page} ({language}) lists no orders: {rows[:500]}"
                    assert_no_sideways_scroll(browser, page, language)
        assert "Traceback" not in server.logs()
