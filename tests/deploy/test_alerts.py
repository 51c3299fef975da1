"""deploy/prometheus/alerts.rules.yml and deploy/grafana/fleet.json: the rules pass promtool and its unit
tests (tests/deploy/alerts.test.yml), rules and panels use only metrics the server exports, and Debian's
Prometheus, scraping a real Gunicorn, fires the database alert once the database is stopped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

from coffee_payment.conf_values import DATABASE_CONNECT_TIMEOUT
from devtools import postgres
from devtools.processes import BIN, REPO, Server, base_environ, free_port, gunicorn, run, serving
from tests.payments.test_scrape_metrics import scrape

RULES = REPO / "deploy" / "prometheus" / "alerts.rules.yml"
RULE_TESTS = REPO / "tests" / "deploy" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "fleet.json"
PROMTOOL, PROMETHEUS = Path("/usr/bin/promtool"), Path("/usr/bin/prometheus")
needs_prometheus = pytest.mark.skipif(
    not (PROMTOOL.exists() and PROMETHEUS.exists()),
    reason="Debian's prometheus package is not installed (apt-get install -y prometheus; .ci/run does)")
# Our metrics' names; PromQL's functions and keywords are not ours.
METRIC_NAME = re.compile(r"\bcoffee_\w+")


def alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def panel_exprs() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}


def seconds(duration: str) -> float:
    """A Prometheus duration of one unit ("1m", "30s") in seconds."""
    number, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


@needs_prometheus
def test_the_rules_pass_promtool_check() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_tells_the_operator_what_to_do() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, name
        # Static, so that promtool's unit tests can expect it verbatim.
        assert "{{" not in rule["annotations"]["description"], name


@needs_prometheus
def test_each_alert_fires_on_its_cause_in_promtool_unit_tests(tmp_path: Path) -> None:
    """Every alert has a case where it fires (and, in the same cases, evaluation times where it must
    not yet, or not at all); the expected description is the rule's own."""
    descriptions = {name: rule["annotations"]["description"] for name, rule in alert_rules().items()}
    cases = yaml.safe_load(RULE_TESTS.read_text())
    fired = set()
    for case in cases["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check.get("exp_alerts", []):
                alert["exp_annotations"]["description"] = descriptions[check["alertname"]]
                fired.add(check["alertname"])
    assert fired == set(descriptions)
    cases["rule_files"] = [str(RULES)]
    generated = tmp_path / "alerts.test.yml"
    generated.write_text(yaml.safe_dump(cases))
    result = subprocess.run([PROMTOOL, "test", "rules", generated], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names(text: str) -> set[str]:
    """The series names a scrape can carry: every family's `# TYPE` line, a histogram's three series."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


@pytest.mark.django_db(transaction=True)
def test_rules_and_panels_use_only_metrics_the_server_exports() -> None:
    """From a scrape of the application Gunicorn serves (every metric family is declared, with or
    without series yet): no dead panel, no rule that can never see its metric."""
    response = scrape()
    assert response.status_code == 200
    exported = exported_names(response.text)
    assert "coffee_reconciliation_last_success_timestamp_seconds" in exported  # the database's gauges too
    used = {name: set(METRIC_NAME.findall(rule["expr"])) for name, rule in alert_rules().items()}
    for title, exprs in panel_exprs().items():
        used[title] = {metric for expr in exprs for metric in METRIC_NAME.findall(expr)}
    assert all(used.values()), [name for name, metrics in used.items() if not metrics]
    assert {name: metrics - exported for name, metrics in used.items() if metrics - exported} == {}


# The end-to-end test: how often Prometheus scrapes and evaluates. The scrape waits for the database
# at most DATABASE_WAIT_TIMEOUT and one connection attempt: the scrape timeout must cover both.
SCRAPE_SECONDS, EVALUATION_SECONDS, WAIT_TIMEOUT = 2, 1, 0.5
# The rules as shipped, each `for` shortened to this: the expressions are what this test proves
# against a real server (promtool's unit tests hold every `for`), in seconds instead of minutes.
HOLD_SECONDS = 8


def rules_held_shorter(path: Path) -> Path:
    """A copy of the rules file with every alert's `for` at HOLD_SECONDS."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{HOLD_SECONDS}s"
    path.write_text(yaml.safe_dump(rules))
    return path


class Watched(NamedTuple):
    server: Server
    database_url: str
    prometheus: Server


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    """A Gunicorn on a throwaway PostgreSQL cluster, and Prometheus scraping its metrics port with the rules."""
    with postgres.cluster() as url:
        env = base_environ(tmp_path, DATABASE_URL=url, GUNICORN_WORKERS="1", DATABASE_WAIT_TIMEOUT=str(WAIT_TIMEOUT))
        migrated = run([str(BIN / "python"), "manage.py", "migrate", "--noinput"], env=env)
        assert migrated.returncode == 0, migrated.stderr
        with gunicorn(tmp_path, env=env) as server:
            config = tmp_path / "prometheus.yml"
            config.write_text(yaml.safe_dump({
                "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s",
                           "evaluation_interval": f"{EVALUATION_SECONDS}s"},
                "rule_files": [str(rules_held_shorter(tmp_path / "alerts.rules.yml"))],
                "scrape_configs": [{"job_name": "coffee-payment-server",
                                    "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]}],
            }))
            port = free_port()
            command = [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{port}"]
            with serving(tmp_path, "prometheus", command, env=os.environ, port=port, wait=False) as scraper:
                scraper.wait_until_serving(path="/-/ready")
                yield Watched(server=server, database_url=url, prometheus=scraper)


def query(scraper: Server, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{scraper.url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def alert_states(scraper: Server, name: str) -> set[str]:
    alerts = httpx.get(f"{scraper.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {alert["state"] for alert in alerts if alert["labels"]["alertname"] == name}


def wait_for(condition: Any, *, timeout: float, what: str) -> float:
    """Seconds until `condition()` is true, polled every 0.2 s; fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(0.2)
    return time.monotonic() - start


@needs_prometheus
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_prometheus_fires_the_database_alert_once_the_database_is_stopped(watched: Watched) -> None:
    server, scraper = watched.server, watched.prometheus
    assert "for" in alert_rules()["CoffeeDatabaseUnreachable"]
    hold = HOLD_SECONDS
    # A scrape that fails its reads, then the evaluation that sees it, twice each: the one under way
    # when the state changed, and the next.
    cycle = 2 * (SCRAPE_SECONDS + EVALUATION_SECONDS) + WAIT_TIMEOUT + DATABASE_CONNECT_TIMEOUT
    wait_for(lambda: query(scraper, "coffee_database_up == 1"), timeout=2 * cycle, what="the first scrape")
    # Every panel's query is valid PromQL for this Prometheus.
    for exprs in panel_exprs().values():
        for expr in exprs:
            query(scraper, expr)
    assert alert_states(scraper, "CoffeeDatabaseUnreachable") == set()

    postgres.stop(watched.database_url)
    stopped = time.monotonic()
    pending = wait_for(lambda: alert_states(scraper, "CoffeeDatabaseUnreachable") == {"pending"}, timeout=cycle,
                       what="the alert pending")
    wait_for(lambda: alert_states(scraper, "CoffeeDatabaseUnreachable") == {"firing"}, timeout=hold + cycle,
             what="the alert firing")
    fired = time.monotonic() - stopped
    print(f"pending after {pending:.1f} s, firing after {fired:.1f} s (for: {hold} s)")
    # Not before its `for` has passed.
    assert fired >= hold
    assert httpx.get(server.url + "/ready", timeout=10).status_code == 503
