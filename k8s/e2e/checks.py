"""What a finished run must have left: its results.json in the store (`helm test`) and its metrics in Prometheus."""

from __future__ import annotations

import json
import shlex
from typing import Any
from urllib.parse import urlencode

from e2e.commands import E2EError, helm_argv, kubectl_argv, sh
from e2e.settings import NAMESPACE


def check_results(release: str, namespace: str) -> None:
    """The chart's own `helm test` pod reads <output>/results.json from the store."""
    sh(*helm_argv("test", release, "--namespace", namespace, "--logs", "--timeout", "5m"),
       hint="the test pod's log above says what is missing")  # fmt: skip


def metrics_query(run_name: str) -> str:
    """Series of this run only (every mnist_train_* series carries a `run` label), counted per scrape job."""
    return f'count by (job) (count_over_time({{__name__=~"mnist_train_.+", run="{run_name}"}}[1h]))'


def prometheus_query_path(query: str, namespace: str = NAMESPACE) -> str:
    """The API-server proxy path of a Prometheus instant query (for `kubectl get --raw`)."""
    return f"/api/v1/namespaces/{namespace}/services/prometheus:9090/proxy/api/v1/query?{urlencode({'query': query})}"


def metric_jobs(response: dict[str, Any]) -> dict[str, int]:
    """Series counts per scrape job from a `count by (job)` answer; raises if Prometheus reported an error."""
    if response.get("status") != "success":
        raise E2EError(f"Prometheus query failed: {response.get('error', response)}")
    return {item["metric"].get("job", ""): int(float(item["value"][1])) for item in response["data"]["result"]}


def check_metrics(release: str, namespace: str) -> None:
    query = metrics_query(release)
    response = json.loads(sh(*kubectl_argv("get", "--raw", prometheus_query_path(query, namespace)), capture=True))
    jobs = metric_jobs(response)
    if not jobs:
        look = shlex.join(kubectl_argv("--namespace", namespace, "port-forward", "svc/prometheus", "9090"))
        raise E2EError(f"Prometheus has no mnist_train_* series of run {release} (query: {query}); look with `{look}`")
    print(f"Prometheus has mnist_train_* series of run {release} from: {jobs}")
