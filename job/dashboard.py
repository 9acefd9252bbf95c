"""Generate the Grafana dashboard of a training run: `python -m job.dashboard [--output FILE]`.

The JSON in charts/mnist-train-dashboard/dashboards/training.json is this module's output; a test keeps the two equal.
Per-epoch panels use Grafana's "trend" visualization (x axis = any numeric field): an instant query returns the
epoch-labelled gauges as a table, and transformations pivot it to one row per epoch and one column per series.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

try:  # a development tool, not needed to train: the package's [dev] extra brings its library
    from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries, trend
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus as prom
    from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataSourceRef,
        DataTransformerConfig,
        DynamicConfigValue,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat
except ImportError as missing:
    raise SystemExit(
        f"python -m job.dashboard: {missing.name} is not installed; install the development extra: "
        "pip install -e '.[dev]' (make setup does)"
    ) from None

UID = "mnist-train"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = 'namespace=~"$namespace", job=~"$job", run=~"$run"'
MODEL = RUN + ', model=~"$model"'
RAY = 'namespace=~"$namespace", ray_train_run_name=~"$run"'
SERVE = 'namespace=~"$namespace", application="mnist"'  # `mnist-train serve` (job/serve.py), through Ray's metrics
INFO_LABELS = (
    "run, dataset, workers, gpu, device_type, device_name, devices, onednn, version, python_version, "
    "tensorflow_version, tf_keras_version, ray_version"
)


def last(metric: str, selector: str) -> str:
    """The latest value in the dashboard's time range, so a finished run (targets gone) still shows."""
    return f"last_over_time({metric}{{{selector}}}[$__range])"


def query(expr: str, legend: str = "", instant: bool = False, as_table: bool = False) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).ref_id("A").datasource(DS)
    q = q.instant() if instant else q.range()
    if legend:
        q = q.legend_format(legend)
    return q.format(PromQueryFormat.TABLE) if as_table else q


def _transform(id_val: str, options: dict) -> DataTransformerConfig:
    return DataTransformerConfig(id_val=id_val, options=options)


def _panel(kind: Any, title: str, description: str, target: Any) -> Any:
    """Every panel's head: its title and description, the Prometheus data source, and its one query."""
    return kind.Panel().title(title).description(description).datasource(DS).with_target(target)


def per_epoch(title: str, metric: str, series: Sequence[str], unit: str, description: str) -> trend.Panel:
    """A trend panel with x = epoch and one line per combination of `series` labels (e.g. model and split)."""
    by = ", ".join(["epoch", *series])
    expr = f"max by ({by}) ({last(metric, MODEL)})"
    if len(series) > 1:
        expr = f'label_join({expr}, "series", " ", {", ".join(f"{s!r}" for s in series)})'.replace("'", '"')
    column = "series" if len(series) > 1 else series[0]
    pivoted = f"epoch\\{column}"
    return (
        _panel(trend, title, description, query(expr, instant=True, as_table=True))
        .with_transformation(
            _transform(
                "groupingToMatrix",
                {"rowField": "epoch", "columnField": column, "valueField": "Value", "emptyValue": "null"},
            )
        )
        .with_transformation(_transform("organize", {"renameByName": {pivoted: "epoch"}}))
        .with_transformation(
            _transform("convertFieldType", {"conversions": [{"targetField": "epoch", "destinationType": "number"}]})
        )
        .with_transformation(_transform("sortBy", {"sort": [{"field": "epoch"}]}))
        .x_field("epoch")
        .unit(unit)
        .show_points(common.VisibilityMode.ALWAYS)
        .legend(VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST))
        .height(9)
        .span(12)
    )


def _stat(title: str, expr: str, legend: str, unit: str, description: str) -> stat.Panel:
    return (
        _panel(stat, title, description, query(expr, legend, instant=True))
        .unit(unit)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .height(5)
    )


def run_status() -> stat.Panel:
    expr = f"max by (status) ({last('mnist_train_run_status', RUN)}) == 1"
    color = {"succeeded": "green", "failed": "red"}
    panel = _stat(
        "Run status",
        expr,
        "{{status}}",
        "none",
        "Published by the driver when the run ends: pushed, or served until scraped (--metrics-linger).",
    )
    panel = panel.text_mode(common.BigValueTextMode.NAME).color_mode(common.BigValueColorMode.BACKGROUND)
    for name, value in color.items():
        props = [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": value})]
        panel = panel.override_by_name(name, props)
    return panel.no_value("running (no outcome yet)").span(4)


def epochs_done() -> bargauge.Panel:
    done = f"max by (model) ({last('mnist_train_epochs_completed', MODEL)})"
    planned = f"max by (model) ({last('mnist_train_epochs_planned', MODEL)})"
    return (
        _panel(
            bargauge,
            "Epochs done / total",
            "Finished epochs over the epochs planned, per model (resumed epochs count).",
            query(f"{done} / {planned}", "{{model}}", instant=True),
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .orientation(common.VizOrientation.HORIZONTAL)
        .height(5)
        .span(6)
    )


def run_info() -> table.Panel:
    expr = f"max by ({INFO_LABELS}) ({last('mnist_train_info', RUN)})"
    return (
        _panel(
            table,
            "Run metadata",
            "mnist_train_info: data set, workers, GPU, oneDNN and versions.",
            query(expr, instant=True, as_table=True),
        )
        .with_transformation(_transform("organize", {"excludeByName": {"Time": True, "Value": True}}))
        .height(5)
        .span(24)
    )


def throughput() -> timeseries.Panel:
    expr = "max by (model, rank) (mnist_train_samples_per_second{" + MODEL + "})"
    return (
        _panel(
            timeseries,
            "Throughput per worker",
            "Training samples per second of each worker (rank) in its last finished epoch.",
            query(expr, "{{model}} rank {{rank}}"),
        )
        .unit("short")
        .axis_label("samples/s")
        .show_points(common.VisibilityMode.ALWAYS)
        .height(8)
        .span(12)
    )


def ray_panel(title: str, expr: str, legend: str, unit: str, description: str) -> timeseries.Panel:
    return _panel(timeseries, title, description, query(expr, legend)).unit(unit).height(8).span(8)


def _variable(name: str, label: str, expr: str, multi: bool, all_value: str | None) -> dash.QueryVariable:
    v = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query({"query": expr, "refId": f"{name}-query"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_DESC if name == "run" else VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(all_value is not None)
    )
    if all_value is not None:
        v = v.current(VariableOption(selected=True, text="All", value="$__all"))
    return v.all_value(all_value) if all_value else v


def variables() -> list[dash.QueryVariable | dash.DatasourceVariable]:
    ds = dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    return [
        ds,
        _variable("namespace", "Namespace", "label_values(mnist_train_info, namespace)", True, ".*"),
        _variable("job", "Job", 'label_values(mnist_train_info{namespace=~"$namespace"}, job)', True, ".*"),
        _variable(
            "run", "Run", 'label_values(mnist_train_info{namespace=~"$namespace", job=~"$job"}, run)', False, None
        ),
        _variable("model", "Model", 'label_values(mnist_train_epochs_planned{run=~"$run"}, model)', True, ""),
    ]


def _outcome_row(d: dash.Dashboard) -> dash.Dashboard:
    d = d.with_row(dash.Row("Outcome")).with_panel(run_status()).with_panel(epochs_done())
    d = d.with_panel(
        _stat(
            "Final test error",
            f"max by (model) ({last('mnist_train_test_error_ratio', MODEL)})",
            "{{model}}",
            "percentunit",
            "Error on the full test set after the last epoch (ratio shown as %).",
        ).span(6)
    )
    d = d.with_panel(
        _stat(
            "Final test loss",
            f"max by (model) ({last('mnist_train_test_loss', MODEL)})",
            "{{model}}",
            "none",
            "Loss on the full test set after the last epoch.",
        ).span(4)
    )
    end, start = (
        last("mnist_train_run_end_timestamp_seconds", RUN),
        last("mnist_train_run_start_timestamp_seconds", RUN),
    )
    d = d.with_panel(_stat("Run duration", f"max({end}) - min({start})", "", "s", "Start to end of the run.").span(4))
    success = (
        'last_over_time(mnist_train_last_success_timestamp_seconds{namespace=~"$namespace", job=~"$job"}[$__range])'
    )
    d = d.with_panel(
        _stat(
            "Last successful run",
            f"max({success}) * 1000",
            "",
            "dateTimeFromNow",
            "When a run of this job last ended successfully (any run in the time range).",
        ).span(24)
    )
    return d.with_panel(run_info())


def _epoch_row(d: dash.Dashboard) -> dash.Dashboard:
    d = d.with_row(dash.Row("Per epoch (x axis = epoch)"))
    d = d.with_panel(
        per_epoch(
            "Loss per epoch",
            "mnist_train_epoch_loss",
            ["model", "split"],
            "none",
            "Train and validation loss at the end of each epoch, per model.",
        )
    )
    d = d.with_panel(
        per_epoch(
            "Accuracy per epoch",
            "mnist_train_epoch_accuracy_ratio",
            ["model", "split"],
            "percentunit",
            "Train and validation accuracy at the end of each epoch, per model.",
        )
    )
    d = d.with_panel(
        per_epoch(
            "Epoch duration",
            "mnist_train_epoch_duration_seconds",
            ["model"],
            "s",
            "Wall time of each epoch including validation, per model.",
        )
    )
    return d.with_panel(throughput())


def _ray_row(d: dash.Dashboard) -> dash.Dashboard:
    d = d.with_row(dash.Row("Ray Train"))
    d = d.with_panel(
        ray_panel(
            "Ray Train controller state",
            f"max by (ray_train_controller_state) (ray_train_controller_state{{{RAY}}})",
            "{{ray_train_controller_state}}",
            "none",
            "1 while the Ray Train controller is in that state.",
        )
    )
    d = d.with_panel(
        ray_panel(
            "Worker group start time",
            f"max(ray_train_worker_group_start_total_time_s{{{RAY}}})",
            "start",
            "s",
            "Total time Ray Train took to start the worker group.",
        )
    )
    return d.with_panel(
        ray_panel(
            "Time blocked in ray.train.report",
            f"max by (ray_train_worker_world_rank) (ray_train_report_total_blocked_time_s{{{RAY}}})",
            "rank {{ray_train_worker_world_rank}}",
            "s",
            "Cumulative time each worker waited in report().",
        )
    )


def _serve_row(d: dash.Dashboard) -> dash.Dashboard:
    d = d.with_row(dash.Row("Serving (mnist-train serve)"))
    panels = [
        ("Requests per second by status", f"sum by (code) (rate(ray_mnist_serve_requests_total{{{SERVE}}}[1m]))",
         "{{code}}", "reqps", "HTTP answers of the model server per second; 400s are bad input, 500s failures."),
        ("Request latency p50",
         f"histogram_quantile(0.5, sum by (le) (rate(ray_mnist_serve_request_duration_seconds_bucket{{{SERVE}}}[1m])))",
         "p50", "s", "Median time from a request's arrival at a replica to its answer, all status codes."),
        ("Digits per model call (p50)",
         f"histogram_quantile(0.5, sum by (le) (rate(ray_mnist_serve_batch_size_bucket{{{SERVE}}}[1m])))",
         "p50", "none", "How many digits @serve.batch gathered into one model call."),
    ]  # fmt: skip
    for title, expr, legend, unit, description in panels:
        d = d.with_panel(ray_panel(title, expr, legend, unit, description))
    return d


def build() -> dict:
    """The dashboard as a JSON-ready dict."""
    d = (
        dash.Dashboard("MNIST training (Ray Train)")
        .uid(UID)
        .tags(["mnist-train", "ray-train"])
        .description(
            "Loss, accuracy, epoch time, throughput and outcome of mnist-train runs. Generated by job/dashboard.py."
        )
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(variables())
    )
    d = _serve_row(_ray_row(_epoch_row(_outcome_row(d))))
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m job.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="write the JSON here instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
