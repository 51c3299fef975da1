"""The customer pages in a real browser on a phone-sized screen: Debian's Chromium, driven through
its chromedriver by Selenium (nothing is downloaded), against a real Gunicorn and the fake provider.

QR link -> order page (Russian, roubles) -> Pay -> the provider's page -> Pay there -> the status
page says paid; and a second drink cancelled on the provider's page shows the next step. With
receipts, the order page asks for the customer's contact (a bad one is refused in Russian) and the
customer pays with SBP. On every page nothing is wider than the 390 x 844 screen and every button,
link and field stays inside its card.

Skipped when chromium or chromedriver is missing, unless REQUIRE_BROWSER_TESTS=1 (CI, .ci/run); runs in
the SQLite pass of `make test` only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devtools import postgres
from devtools.processes import BIN, base_environ, fake_provider, gunicorn, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SECRETS = "demo-shop:demo-secret"
# migrate and seed_demo in one process: one Django start less.
SEED = ("import django; django.setup(); from django.core.management import call_command; "
        "call_command('migrate', interactive=False, verbosity=0); call_command('seed_demo')")
# The demo merchant sending receipts (VAT 22 %), its customers choosing the method on the provider's page.
WITH_RECEIPTS = "; from payments.models import Merchant; Merchant.objects.update(receipts_enabled=True, vat_code=11)"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}

# What the page must look like at PHONE's size: no sideways scrolling, and every visible button,
# link and paragraph inside the card that holds it (or inside the screen, where there is no card).
LAYOUT = """
const problems = [];
const root = document.documentElement;
if (root.scrollWidth > window.innerWidth) problems.push(`page is ${root.scrollWidth} px wide`);
for (const element of document.querySelectorAll("button, a, .button, p, h1, h2, form, input, label")) {
  const box = element.getBoundingClientRect();
  if (box.width === 0 && box.height === 0) continue;  // hidden
  const frame = element.closest(".card")?.getBoundingClientRect() ?? {left: 0, right: window.innerWidth};
  if (box.left < frame.left - 0.5 || box.right > frame.right + 0.5) {
    problems.push(`${element.tagName} "${element.textContent.trim().slice(0, 40)}" spans ` +
                  `${box.left.toFixed(1)}..${box.right.toFixed(1)}, its frame ${frame.left}..${frame.right}`);
  }
}
return {width: window.innerWidth, problems: problems};
"""


def browser_tools() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = "chromium" if chromium is None else "chromedriver"
        if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
            pytest.fail(f"REQUIRE_BROWSER_TESTS=1 but {missing} is not installed (Debian: chromium chromium-driver)")
        pytest.skip(f"{missing} is not installed (Debian: chromium chromium-driver)")
    return chromium, driver


@contextlib.contextmanager
def chromium_session(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium whose user reads Russian, quit afterwards."""
    chromium, driver_path = browser_tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Root needs --no-sandbox; the rest keep Chromium off the (closed) network and quick to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-quic", "--disable-extensions", "--lang=ru-RU", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": "ru-RU,ru"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.set_page_load_timeout(20)
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium as a 390 x 844 phone whose customer reads Russian."""
    with chromium_session(tmp_path) as browser:
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
        yield browser


def assert_fits_the_phone(browser: Any, page: str) -> None:
    layout = browser.execute_script(LAYOUT)
    # 390: the page has a viewport (without one a phone lays it out 980 px wide, shrunk).
    assert layout == {"width": PHONE["width"], "problems": []}, f"{page}: {layout}"


def wait_for(browser: Any, script: str, *, timeout: float = 10.0) -> Any:
    """Until `script` returns something true. It may run on the page being left: `?.` for elements."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda driver: driver.execute_script(script))


@contextlib.contextmanager
def demo_served(tmp_path: Path, seed: str = SEED) -> Iterator[tuple[Any, Any, list[str]]]:
    """(the fake provider, the server, the lobby machine's espresso (99 roubles) and cappuccino links)."""
    env = base_environ(tmp_path)
    webhook = f"http://127.0.0.1:{env['GUNICORN_PORT']}/v1/payments/webhook"
    with postgres.server_database(tmp_path) as database_url:
        env = base_environ(tmp_path, DATABASE_URL=database_url, GUNICORN_PORT=env["GUNICORN_PORT"],
                           GUNICORN_WORKERS="1", PAYMENT_PROVIDER_SECRETS=SECRETS)
        result = run([str(BIN / "python"), "-c", seed], env={**env, "DJANGO_SETTINGS_MODULE": "coffee_payment.settings"})
        assert result.returncode == 0, result.stderr
        links = [urlsplit(line.split()[-1]) for line in result.stdout.splitlines() if "/v1/pay?" in line][:2]
        with fake_provider(tmp_path, "--credentials", SECRETS, "--webhook-url", webhook) as provider, gunicorn(
            tmp_path, env={**env, "PAYMENT_PROVIDER_URL": f"{provider.url}/v3"}
        ) as server:
            yield provider, server, [f"{server.url}{link.path}?{link.query}" for link in links]


# Once per suite run: the database plays no part in what these tests check, and they are slow ones.
SQLITE_PASS_ONLY = pytest.mark.skipif(postgres.is_postgres(os.environ.get("DATABASE_URL", "")),
                                      reason="the browser walks run in the SQLite pass only")


@SQLITE_PASS_ONLY
def test_a_phone_pays_in_russian_and_every_page_fits(tmp_path: Path, phone: Any) -> None:
    from selenium.webdriver.common.by import By

    with demo_served(tmp_path) as (provider, server, (espresso, cappuccino)):
        phone.get(espresso)
        assert phone.execute_script("return document.documentElement.lang") == "ru"
        text = phone.find_element(By.TAG_NAME, "body").text
        assert "Espresso" in text and "Маленький" in text and "Оплатите до" in text, text
        assert re.search(r"\b99,00\s₽", text), text
        assert_fits_the_phone(phone, "order page")
        phone.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

        wait_for(phone, f"return location.href.startsWith({provider.url!r})")
        assert_fits_the_phone(phone, "provider's page")
        phone.find_element(By.CSS_SELECTOR, "button[value=succeed]").click()

        wait_for(phone, "return location.pathname.startsWith('/v1/orders/')")
        wait_for(phone, "return document.getElementById('status')?.dataset.status === 'paid'")
        assert phone.find_element(By.ID, "status").text == "Оплачено"
        assert not phone.find_element(By.ID, "pay").is_displayed()
        assert_fits_the_phone(phone, "status page, paid")

        phone.get(espresso)  # scanned again: the paid order, with a link to follow it
        assert phone.find_element(By.CSS_SELECTOR, "a.button").text == "Следить за заказом"
        assert_fits_the_phone(phone, "order page, paid")

        phone.get(cappuccino)
        phone.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(phone, f"return location.href.startsWith({provider.url!r})")
        phone.find_element(By.CSS_SELECTOR, "button[value=cancel]").click()
        wait_for(phone, "return document.getElementById('status')?.dataset.status === 'not_paid'")
        steps = [step.text for step in phone.find_elements(By.CSS_SELECTOR, "#next-step p") if step.is_displayed()]
        assert steps[0] == "Оплата не прошла: деньги не списаны." and "новый QR-код" in steps[1], steps
        assert not phone.find_element(By.ID, "pay").is_displayed()
        assert_fits_the_phone(phone, "status page, cancelled")
        assert "Traceback" not in server.logs()


@SQLITE_PASS_ONLY
def test_a_phone_gives_its_contact_for_the_receipt_and_pays_with_sbp(tmp_path: Path, phone: Any) -> None:
    from selenium.webdriver.common.by import By

    with demo_served(tmp_path, SEED + WITH_RECEIPTS) as (provider, server, (espresso, _)):
        phone.get(espresso)
        assert phone.find_element(By.CSS_SELECTOR, "label.contact").text == "Электронная почта или номер телефона для чека"
        assert_fits_the_phone(phone, "order page with the receipt's contact")
        phone.find_element(By.ID, "contact").send_keys("12345")
        phone.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(phone, "return document.getElementById('contact-error') !== null")
        assert phone.find_element(By.ID, "contact-error").text.startswith("Это не номер телефона")
        assert "12345" not in phone.page_source
        assert_fits_the_phone(phone, "order page, contact refused")

        phone.find_element(By.ID, "contact").send_keys("ivan.petrov@example.ru")
        phone.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(phone, f"return location.href.startsWith({provider.url!r})")
        phone.find_element(By.CSS_SELECTOR, "form:has(input[value=sbp]) button[value=succeed]").click()
        wait_for(phone, "return document.getElementById('status')?.dataset.status === 'paid'")
        assert phone.find_element(By.ID, "status").text == "Оплачено"
        assert "Traceback" not in server.logs() and "ivan.petrov" not in server.logs()
