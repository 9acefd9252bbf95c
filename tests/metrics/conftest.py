"""Fixtures: a real Pushgateway and Prometheus per test on free loopback ports, stopped in teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from promlib import Prometheus, Server, start_prometheus, start_pushgateway


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Server]:
    server = start_pushgateway(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[list[dict[str, Any]]], Prometheus]]:
    started: list[Prometheus] = []

    def make(scrape_configs: list[dict[str, Any]]) -> Prometheus:
        started.append(start_prometheus(tmp_path, scrape_configs))
        return started[-1]

    yield make
    for server in started:
        server.stop()
