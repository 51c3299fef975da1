"""deploy/kubernetes, rendered by kustomize, checked against the schema and against the app itself.

Numbers are not repeated here: graceful timeout and workers come from the overlay's ConfigMap
through coffee_payment.conf.load_settings (the validator the server runs), probe paths from the
URLconf, the readiness deadline from Django settings.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from django.conf import settings
from django.core.management import get_commands
from django.urls import Resolver404, resolve

from coffee_payment.conf import LAYER_VARIABLE, VARIABLES, ConfigError, Settings, load_settings
from coffee_payment.metrics import METRICS_PATH
from tests.support.kubernetes import (
    BASE,
    OVERLAYS,
    SECRET_STAND_INS,
    Manifests,
    containers,
    ingress_example,
    overlay,
    pod_spec,
    plain_name,
    quantity,
    rendered,
    template_secret,
)
from devtools.processes import REPO

# The oldest Kubernetes the manifests support (the preStop sleep handler is on by default from
# 1.30) and the newest that kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Seconds between the end of the graceful timeout and the kubelet's SIGKILL: the master reaps
# its workers and exits.
SHUTDOWN_MARGIN = 5

# Variables the image's entrypoint reads, not the settings loader.
IMAGE_VARIABLES = frozenset({"RUN_MODE", "RUN_MIGRATIONS"})

# Each worker is one event loop: one per core of the CPU limit. Memory: 128Mi per worker plus
# 128Mi for the master and headroom (measured: master ~35 MB, worker ~50 MB resident).
MEMORY_PER_PROCESS = 128 * 2**20

# The documented migration step applies only what matches this selector (docs/operations.md).
MIGRATION_COMPONENTS = frozenset({"config", "migrate"})

# What may differ between staging and production, as paths into the rendered documents.
OVERLAY_DIFFERENCES = [
    r"\w+/[\w-]+:metadata\.namespace",
    r"ConfigMap/coffee-payment-server:metadata\.name",  # the hash of the values
    r"ConfigMap/coffee-payment-server:data\.(GUNICORN_\w+|DJANGO_ALLOWED_HOSTS|DJANGO_PUBLIC_BASE_URL)",
    r"(Deployment|Job)/[\w-]+:spec\.template\.spec\.containers\.0\.envFrom\.0\.configMapRef\.name",
    r"(Deployment|Job)/[\w-]+:spec\.template\.spec\.containers\.0\.image",
    r"CronJob/[\w-]+:spec\.jobTemplate\.spec\.template\.spec\.containers\.0\.envFrom\.0\.configMapRef\.name",
    r"CronJob/[\w-]+:spec\.jobTemplate\.spec\.template\.spec\.containers\.0\.image",
    r"Deployment/coffee-payment-server:spec\.template\.spec\.containers\.0\.resources\..*",
    r"HorizontalPodAutoscaler/coffee-payment-server:spec\.(minReplicas|maxReplicas)",
]


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return overlay(request.param)


def server_settings(manifests: Manifests, workload: dict[str, Any]) -> Settings:
    """What the server in this workload would resolve at start, through the real validator."""
    return load_settings(environ=manifests.pod_environ(workload, secret=SECRET_STAND_INS))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): node}


# Schema
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", [*OVERLAYS, "base", "secret template", "ingress example"])
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(source: str, version: str) -> None:
    if source == "secret template":
        docs = [template_secret()]
    elif source == "ingress example":
        docs = [ingress_example()]
    else:
        docs = (rendered(BASE) if source == "base" else overlay(source)).documents
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_each_overlay_has_the_resources_of_a_release(manifests: Manifests) -> None:
    kinds = sorted(doc["kind"] for doc in manifests.documents)
    assert kinds == [
        "ConfigMap",
        "CronJob",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Job",
        "NetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]


def test_overlays_differ_only_in_namespace_image_hosts_gunicorn_values_resources_and_replicas() -> None:
    staging, production = (
        {
            f"{doc['kind']}/{plain_name(doc)}:{path}": value
            for doc in overlay(name).documents
            for path, value in flatten(doc).items()
        }
        for name in OVERLAYS
    )
    differing = {path for path in staging.keys() | production.keys() if staging.get(path) != production.get(path)}
    unexplained = sorted(path for path in differing if not any(re.fullmatch(p, path) for p in OVERLAY_DIFFERENCES))
    assert unexplained == []
    assert "ConfigMap/coffee-payment-server:data.GUNICORN_WORKERS" in differing


# The environment: ConfigMap, Secret, and what the server makes of them
# ------------------------------------------------------------------------------


def test_the_server_starts_with_the_overlay_environment(manifests: Manifests) -> None:
    loaded = server_settings(manifests, manifests.deployment)
    assert loaded.layer == "production"
    assert not loaded.debug
    assert loaded.warnings == ()
    assert loaded.sources["gunicorn.workers"] == "env GUNICORN_WORKERS"


def test_the_migration_job_gets_the_same_environment_as_the_server(manifests: Manifests) -> None:
    deployment_env = manifests.pod_environ(manifests.deployment, secret=SECRET_STAND_INS)
    assert manifests.pod_environ(manifests.job, secret=SECRET_STAND_INS) == deployment_env


def test_the_reconciliation_cron_job_gets_the_same_environment_as_the_server(manifests: Manifests) -> None:
    deployment_env = manifests.pod_environ(manifests.deployment, secret=SECRET_STAND_INS)
    assert manifests.pod_environ(manifests.cron_job, secret=SECRET_STAND_INS) == deployment_env
    loaded = server_settings(manifests, manifests.cron_job)
    assert (loaded.layer, loaded.warnings) == ("production", ())


def test_every_variable_the_pods_get_is_read_by_the_app_or_the_image(manifests: Manifests) -> None:
    known = {*VARIABLES, LAYER_VARIABLE, *IMAGE_VARIABLES}
    for workload in (manifests.deployment, manifests.job, manifests.cron_job):
        assert set(manifests.pod_environ(workload, secret=SECRET_STAND_INS)) <= known


def test_secrets_are_in_the_secret_template_only_and_it_holds_no_values(manifests: Manifests) -> None:
    secret = template_secret()
    assert set(secret["stringData"]) == {"DJANGO_SECRET_KEY", "DATABASE_URL", "PAYMENT_PROVIDER_SECRETS"}
    assert set(secret["stringData"].values()) == {""}
    assert set(secret["stringData"]).isdisjoint(manifests.config_map["data"])
    # `kubectl apply -k` must never overwrite the real Secret.
    assert all(doc["kind"] != "Secret" for doc in manifests.documents)


def test_an_empty_secret_stops_the_server_with_the_variables_name(manifests: Manifests) -> None:
    empty = dict.fromkeys(SECRET_STAND_INS, "")
    with pytest.raises(ConfigError, match="DJANGO_SECRET_KEY is required"):
        load_settings(environ=manifests.pod_environ(manifests.deployment, secret=empty))


def test_service_links_are_off_because_an_injected_variable_stops_the_server(manifests: Manifests) -> None:
    for workload in (manifests.deployment, manifests.job, manifests.cron_job):
        assert pod_spec(workload)["enableServiceLinks"] is False
    # What a Service named `gunicorn` would inject with service links on.
    environ = manifests.pod_environ(manifests.deployment, secret=SECRET_STAND_INS)
    with pytest.raises(ConfigError, match="GUNICORN_PORT='tcp://10.0.0.1:80' is not a whole number"):
        load_settings(environ={**environ, "GUNICORN_PORT": "tcp://10.0.0.1:80"})


# Probes and ports
# ------------------------------------------------------------------------------


def test_the_container_ports_are_the_ports_the_server_binds(manifests: Manifests) -> None:
    http, metrics = containers(manifests.deployment)[0]["ports"]
    server = server_settings(manifests, manifests.deployment).server
    assert http == {"name": "http", "containerPort": server.port, "protocol": "TCP"}
    assert metrics == {"name": "metrics", "containerPort": server.metrics_port, "protocol": "TCP"}
    # The Service routes the http port alone: nothing outside the pod network reaches /metrics.
    service = manifests.one("Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize(
    ("probe", "view"), [("startupProbe", "health"), ("livenessProbe", "health"), ("readinessProbe", "ready")]
)
def test_probes_hit_the_health_views_on_the_http_port(manifests: Manifests, probe: str, view: str) -> None:
    action = containers(manifests.deployment)[0][probe]["httpGet"]
    assert action["port"] == "http"
    assert resolve(action["path"]).url_name == view
    # Probes send the pod IP as Host: only these paths answer any Host.
    assert action["path"] in settings.PROBE_PATHS


def test_probe_paths_would_not_resolve_if_they_were_misspelt() -> None:
    with pytest.raises(Resolver404):
        resolve("/healthz")


def test_readiness_waits_longer_than_the_database_check(manifests: Manifests) -> None:
    readiness = containers(manifests.deployment)[0]["readinessProbe"]
    assert readiness["timeoutSeconds"] > settings.READINESS_DATABASE_TIMEOUT


# Shutdown and rollout
# ------------------------------------------------------------------------------


def test_grace_period_covers_prestop_graceful_timeout_and_a_margin(manifests: Manifests) -> None:
    """R3.7: shutdown completes within the Kubernetes termination grace period."""
    spec = pod_spec(manifests.deployment)
    pre_stop = containers(manifests.deployment)[0]["lifecycle"]["preStop"]
    # The native sleep handler: the image has no `sleep` binary to exec.
    assert set(pre_stop) == {"sleep"}
    graceful_timeout = server_settings(manifests, manifests.deployment).server.graceful_timeout
    assert spec["terminationGracePeriodSeconds"] >= pre_stop["sleep"]["seconds"] + graceful_timeout + SHUTDOWN_MARGIN


def test_rollouts_never_drop_below_the_running_pods(manifests: Manifests) -> None:
    strategy = manifests.deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1


def test_the_autoscaler_owns_the_replica_count(manifests: Manifests) -> None:
    hpa = manifests.one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", manifests.deployment["metadata"]["name"])
    assert "replicas" not in manifests.deployment["spec"]
    # A disruption budget of one leaves pods serving only with at least two.
    assert hpa["spec"]["minReplicas"] >= 2
    assert manifests.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# Sizing
# ------------------------------------------------------------------------------


def test_workers_match_the_cpu_limit(manifests: Manifests) -> None:
    resources = containers(manifests.deployment)[0]["resources"]
    workers = server_settings(manifests, manifests.deployment).server.workers
    assert quantity(resources["limits"]["cpu"]) == workers
    # The autoscaler's utilisation is measured against the request.
    assert quantity(resources["requests"]["cpu"]) == workers


def test_memory_covers_the_master_and_every_worker(manifests: Manifests) -> None:
    resources = containers(manifests.deployment)[0]["resources"]
    workers = server_settings(manifests, manifests.deployment).server.workers
    assert quantity(resources["limits"]["memory"]) >= MEMORY_PER_PROCESS * (workers + 1)
    # Requests = limits: a pod is never killed for memory the node promised it.
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


# Security and selection
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "Job", "CronJob"])
def test_pods_run_unprivileged_with_a_read_only_root(manifests: Manifests, kind: str) -> None:
    spec = pod_spec(manifests.one(kind))
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The one writable path, in memory.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]


def test_the_migration_job_runs_migrate_in_the_server_image(manifests: Manifests) -> None:
    (job_container,) = containers(manifests.job)
    assert job_container["args"] == ["python", "manage.py", "migrate", "--noinput"]
    assert job_container["image"] == containers(manifests.deployment)[0]["image"]
    assert pod_spec(manifests.job)["restartPolicy"] == "Never"


def test_the_reconciliation_cron_job_runs_one_bounded_run_at_a_time(manifests: Manifests) -> None:
    cron_job = manifests.cron_job
    (container,) = containers(cron_job)
    assert container["args"] == ["python", "manage.py", "reconcile_payments"]
    assert "reconcile_payments" in get_commands()
    assert container["image"] == containers(manifests.deployment)[0]["image"]
    spec, job = cron_job["spec"], cron_job["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 3 and 1 <= spec["failedJobsHistoryLimit"] <= 5
    # Every 5 minutes, and a run stops before the next one is due.
    minutes = int(re.fullmatch(r"\*/(\d+) \* \* \* \*", spec["schedule"]).group(1))
    assert 0 < job["activeDeadlineSeconds"] < minutes * 60
    assert spec["startingDeadlineSeconds"] < minutes * 60
    assert (job["backoffLimit"], pod_spec(cron_job)["restartPolicy"]) == (0, "Never")
    # Its re-read age is longer than its period: an order is re-read at most once per age.
    loaded = server_settings(manifests, cron_job)
    assert loaded.order_reconcile_after_minutes >= minutes


def test_traffic_and_disruption_budget_select_the_web_pods_only(manifests: Manifests) -> None:
    web = manifests.deployment["spec"]["template"]["metadata"]["labels"]
    migrate = manifests.job["spec"]["template"]["metadata"]["labels"]
    reconcile = manifests.cron_job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert manifests.deployment["spec"]["selector"]["matchLabels"] == web
    for selector in (
        manifests.one("Service")["spec"]["selector"],
        manifests.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        manifests.one("NetworkPolicy", "coffee-payment-server")["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= web.items()
        assert not selector.items() <= migrate.items()
        assert not selector.items() <= reconcile.items()
    own = manifests.one("NetworkPolicy", "coffee-payment-server-reconcile")["spec"]
    assert own["podSelector"]["matchLabels"].items() <= reconcile.items()
    assert own["policyTypes"] == ["Ingress"] and "ingress" not in own


def test_the_migration_step_selects_the_job_and_its_config_only(manifests: Manifests) -> None:
    selected = {
        doc["kind"]
        for doc in manifests.documents
        if doc["metadata"]["labels"].get("app.kubernetes.io/component") in MIGRATION_COMPONENTS
    }
    assert selected == {"ConfigMap", "Job", "NetworkPolicy"}


# Documentation
# ------------------------------------------------------------------------------


def documented_environment() -> dict[str, dict[str, str]]:
    """The "Environment as deployed" table of docs/operations.md: variable -> {overlay: value}."""
    operations = (REPO / "docs" / "operations.md").read_text()
    section = operations.split("### Environment as deployed", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (.+?) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {variable: dict(zip(OVERLAYS, (staging, production))) for variable, staging, production in rows}


def test_the_operations_doc_lists_the_environment_as_deployed() -> None:
    documented = documented_environment()
    for name in OVERLAYS:
        manifests = overlay(name)
        environ = manifests.pod_environ(manifests.deployment, secret=dict.fromkeys(SECRET_STAND_INS, "yours"))
        assert {variable: f"`{value}`" if value != "yours" else value for variable, value in environ.items()} == {
            variable: values[name] for variable, values in documented.items()
        }


# Metrics
# ------------------------------------------------------------------------------

# Where the cluster's Prometheus and ingress controller run (the NetworkPolicy lets them in by namespace).
MONITORING_NAMESPACE = "monitoring"
INGRESS_NAMESPACE = "ingress-nginx"


def test_prometheus_scrapes_every_pod_on_the_metrics_port(manifests: Manifests) -> None:
    annotations = manifests.deployment["spec"]["template"]["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in containers(manifests.deployment)[0]["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == METRICS_PATH


def test_the_network_policy_lets_the_ingress_in_on_http_and_the_scraper_on_metrics(manifests: Manifests) -> None:
    rules = manifests.one("NetworkPolicy", "coffee-payment-server")["spec"]["ingress"]
    by_namespace = {
        rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: rule["ports"]
        for rule in rules
    }
    # Every rule names who may come in: no pod but the ingress's reaches the port whose proxy headers count.
    assert len(by_namespace) == len(rules) and all(len(rule["from"]) == 1 for rule in rules)
    assert by_namespace == {INGRESS_NAMESPACE: [{"port": "http", "protocol": "TCP"}],
                            MONITORING_NAMESPACE: [{"port": "metrics", "protocol": "TCP"}]}


def test_the_overlays_trust_the_pod_network_as_the_ingress(manifests: Manifests) -> None:
    server = server_settings(manifests, manifests.deployment).server
    assert server.forwarded_allow_ips == ("10.244.0.0/16",)


def test_nothing_in_the_manifests_routes_metrics_from_outside_the_cluster(manifests: Manifests) -> None:
    """The public route is the cluster's ingress, configured outside these manifests for the public
    paths only (README); the manifests expose the pods to the cluster alone."""
    routing_kinds = {"Ingress", "Gateway", "HTTPRoute", "IngressRoute", "VirtualService"}
    assert not [doc["kind"] for doc in manifests.documents if doc["kind"] in routing_kinds]
    service = manifests.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert "externalIPs" not in service["spec"]


# The ingress example (deploy/kubernetes/ingress.example.yaml)
# ------------------------------------------------------------------------------

# Answered inside the cluster only: the kubelet's probes and the Prometheus scraper.
# The probes' routes; /metrics is no route of the application: it answers on its own port alone.
INTERNAL_PATHS = ("/health", "/ready")


def url_samples() -> list[str]:
    """A path for every route of the URLconf (converters filled in; the admin by its prefix) and the
    static files."""
    from django.urls import URLResolver, get_resolver

    def walk(patterns: list[Any], prefix: str) -> list[str]:
        paths = []
        for pattern in patterns:
            route = prefix + re.sub(r"<[^>]+>", "x", str(pattern.pattern))
            is_app = isinstance(pattern, URLResolver) and route != "/admin/"
            paths += walk(pattern.url_patterns, route) if is_app else [route]
        return paths

    return [*walk(get_resolver().url_patterns, "/"), f"/{settings.STATIC_URL.strip('/')}/admin/css/base.css"]


def routed(ingress: dict[str, Any], path: str) -> bool:
    """Whether a Prefix rule of the ingress sends `path` on (Kubernetes matches whole path elements)."""
    prefixes = [rule["path"].rstrip("/") for host in ingress["spec"]["rules"] for rule in host["http"]["paths"]]
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def test_the_ingress_example_serves_the_overlays_host_over_tls_from_the_service() -> None:
    ingress, production = ingress_example(), overlay("production")
    hosts = production.config_map["data"]["DJANGO_ALLOWED_HOSTS"].split(",")
    assert ingress["metadata"]["namespace"] == production.deployment["metadata"]["namespace"]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == hosts
    assert {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]} == set(hosts)
    assert production.config_map["data"]["DJANGO_PUBLIC_BASE_URL"] == f"https://{hosts[0]}"
    service = production.one("Service")
    backends = [rule["backend"]["service"] for host in ingress["spec"]["rules"] for rule in host["http"]["paths"]]
    assert {backend["name"] for backend in backends} == {service["metadata"]["name"]}
    assert {backend["port"]["name"] for backend in backends} <= {port["name"] for port in service["spec"]["ports"]}


def test_the_ingress_example_routes_every_public_path_and_nothing_internal() -> None:
    ingress = ingress_example()
    samples = url_samples()
    assert set(INTERNAL_PATHS) <= set(samples)
    assert [path for path in samples if path not in INTERNAL_PATHS and not routed(ingress, path)] == []
    assert [path for path in INTERNAL_PATHS if routed(ingress, path)] == []


def test_the_ingress_waits_longer_than_the_server_and_takes_its_largest_body() -> None:
    annotations = ingress_example()["metadata"]["annotations"]
    production = overlay("production")
    server = server_settings(production, production.deployment).server
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > server.timeout
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > server.timeout
    size = re.fullmatch(r"(\d+)([km]?)", annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert size and int(size[1]) * {"": 1, "k": 2**10, "m": 2**20}[size[2]] == server.max_body_bytes
