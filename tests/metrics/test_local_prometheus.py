"""k8s/prometheus-local.yml, the sample config docs/metrics.md tells users to start Prometheus with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from promlib import binary

CONFIG = Path(__file__).resolve().parents[2] / "k8s" / "prometheus-local.yml"


def test_promtool_accepts_the_sample_config() -> None:
    check = subprocess.run([binary("promtool"), "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_it_scrapes_the_worker_port_range_and_keeps_pushed_labels() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    assert jobs["mnist-train"]["static_configs"][0]["targets"] == [f"127.0.0.1:{9400 + i}" for i in range(4)]
    assert jobs["pushgateway"]["honor_labels"] is True
    ray = jobs["ray"]["file_sd_configs"][0]["files"]
    # Ray's own discovery file of a `ray start --head` cluster, and the one docs/metrics.md writes for a local run.
    assert ray == ["/tmp/ray/prom_metrics_service_discovery.json", "/tmp/mnist-train-ray-targets.json"]
    assert "/tmp/mnist-train-ray-targets.json" in (CONFIG.parents[1] / "docs" / "metrics.md").read_text()
