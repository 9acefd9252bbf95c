"""The names, versions and files of the kind flow: one place to read or change them."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO / "k8s" / "kind-config.yaml"
MANIFESTS = REPO / "k8s" / "manifests"
VALUES = REPO / "k8s" / "values-kind.yaml"
CHART = REPO / "charts" / "mnist-train"

CLUSTER = "mnist-train"
CONTEXT = f"kind-{CLUSTER}"  # what `kind create cluster` names the cluster's kubeconfig context
NAMESPACE = "mnist-e2e"
# Each run is a new release, named <prefix>-<UTC time>-<4 hex>. The name contains the chart's name, so the chart's
# fullname, the RayJob and its submitter Job are all named exactly like the release (it stays under the 40
# characters the chart truncates to).
RELEASE_PREFIX = "mnist-train"
IMAGE = "mnist-train:0.1.0-cpu"
CPU_BASE_IMAGE = "rayproject/ray:2.60.0-py311"  # x86-64 only; Ray's arm64 images carry the suffix -aarch64
KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_VERSION = "1.7.0"
KUBERAY_NAMESPACE = "kuberay-system"
S3_SECRET = "mnist-s3"
# moto accepts any keys; these exist only inside the throw-away kind cluster.
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "mnist-e2e", "AWS_SECRET_ACCESS_KEY": "mnist-e2e-not-a-secret"}
