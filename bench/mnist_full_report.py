"""bench/mnist_full.py's report: quality, time to accuracy, resume, the perturbed test set and compute, as Markdown
tables from the runs' figures."""

from __future__ import annotations

import statistics
from typing import Any

from benchlib import fmt
from mnist_full_runs import DEEP

THRESHOLDS = (0.005, 0.0035)  # time to accuracy: until the test error first reaches 0.5%, and 0.35%


def time_to_accuracy(run: dict[str, Any], popen_at_first_step: float) -> dict[str, dict[str, float | None]]:
    """Per trained model: seconds from the command's start until the test error first reaches each threshold.

    For member i of an ensemble, the start-up of the run (command start -> epoch 1 of member 1) plus member i's own
    training up to that epoch: what `--seed` of that member alone would take."""
    found = {}
    for name, m in run["models"].items():
        history = m["history"]
        if not history:
            continue
        t0 = history[0]["started_at"]
        found[name] = {}
        for threshold in THRESHOLDS:
            hit = next((r for r in history if 1 - r["val_accuracy"] <= threshold + 1e-9), None)
            found[name][f"{threshold * 100:.2f}%"] = (
                None if hit is None else popen_at_first_step + hit["started_at"] + hit["seconds"] - t0
            )
    return found


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def quality_table(found: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| run | model | seeds | test error | wall s | s/epoch |", "|---|---|---|---|---|---|"]
    if tut := found.get("tutorial-3"):
        for name, m in tut["models"].items():
            rows.append(f"| tutorial's scripts | {name} | - | {_pct(m['test_error_percent'])} | "
                        f"{fmt(m['wall_s'], '.1f')} | {fmt(m['epoch_s'], '.2f')} |")  # fmt: skip
        rows.append(f"| tutorial's scripts | all three | | | {fmt(tut['wall_s'], '.1f')} | |")
    for run in ("job-0w", "job-1w", "job-2w", "deep-0w", "deep-1w", "deep-2w"):
        if not (r := found.get(run)):
            continue
        members = [n for n in r["models"] if n.startswith(f"{DEEP}-") and n[-1].isdigit()]
        for name, m in r["models"].items():
            if name in members:
                continue
            if name == f"{DEEP}-ensemble":
                errors = [r["models"][n]["test_error_percent"] for n in members]
                seeds = ", ".join(str(r["seed"] + i) for i in range(len(members)))
                each = ", ".join(f"{e:.2f}" for e in errors)
                spread = f"mean {statistics.mean(errors):.3f}%, sd {statistics.stdev(errors):.3f}"
                per_epoch = statistics.mean(r["models"][n]["epoch_s"] for n in members)
                train = statistics.mean(r["models"][n]["train_seconds"] for n in members)
                rows.append(f"| {run} | {DEEP} (single) | {seeds} | {each} ({spread}) | {train:.0f} train each | "
                            f"{per_epoch:.1f} |")  # fmt: skip
                rows.append(f"| {run} | {name} | {seeds} | {_pct(m['test_error_percent'])} | "
                            f"{fmt(r['run_wall_s'], '.1f')} (whole run) | |")  # fmt: skip
            else:
                rows.append(f"| {run} | {name} | {r['seed']} | {_pct(m['test_error_percent'])} | "
                            f"{fmt(m['train_seconds'], '.1f')} train | {fmt(m['epoch_s'], '.2f')} |")  # fmt: skip
        if run.startswith("job"):
            rows.append(f"| {run} | all three | | | {fmt(r['run_wall_s'], '.1f')} | |")
        if r.get("resumed"):
            rows.append(f"| {run} | (resumed by a later invocation: its wall is not one sitting's) | | | | |")
    return rows


def speed_rows(found: dict[str, dict[str, Any]]) -> list[str]:
    peak = found.get("peak")
    if not peak:
        return []
    rows = [f"matmul float32 {peak['matmul_n']}x{peak['matmul_n']}: {peak['matmul_gflops']:.0f} GFLOP/s", "",
            "| model | forward MFLOP/image | training GFLOP/s (3 x forward x 60k + forward x 10k test, per epoch) | "
            "of matmul peak |", "|---|---|---|---|"]  # fmt: skip
    for run, model in (("job-0w", "mlp"), ("job-0w", "cnn"), ("job-0w", "large_cnn"), ("deep-0w", f"{DEEP}-1")):
        flop = peak["forward_flop_per_image"][model.split("-")[0]]
        epoch_s = found.get(run, {}).get("models", {}).get(model, {}).get("epoch_s")
        rate = (3 * flop * 60_000 + flop * 10_000) / epoch_s / 1e9 if epoch_s else None
        share = f"{rate / peak['matmul_gflops'] * 100:.0f}%" if rate else "-"
        rows.append(f"| {model} | {flop / 1e6:.1f} | {fmt(rate, '.1f')} | {share} |")
    return rows


def accuracy_rows(found: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for run in ("deep-0w", "deep-1w", "deep-2w"):
        r = found.get(run)
        if not r or r["resumed"]:
            continue
        for name, hits in time_to_accuracy(r, r["startup_s"]).items():
            cells = " | ".join(fmt(hits[k], ".0f") for k in hits)
            rows.append(f"| {run} | {name} | {cells} | {_pct(r['models'][name]['test_error_percent'])} |")
    if rows:
        head = " | ".join(f"s to {t * 100:.2f}%" for t in THRESHOLDS)
        rows = [f"| run | model | {head} | final |", "|---|---|" + "---|" * len(THRESHOLDS) + "---|", *rows]
    return rows


def report(found: dict[str, dict[str, Any]]) -> None:
    print("\n## Quality on full MNIST (10k test digits); s/epoch is the mean of epochs 2..E\n")
    print("\n".join(quality_table(found)))
    if rows := accuracy_rows(found):
        print("\n## Time to accuracy: command start -> the end of the first epoch at or under the test error\n")
        print("\n".join(rows))
    if r := found.get("resume"):
        same_seed = found.get("deep-0w", {}).get("models", {}).get(f"{DEEP}-1", {}).get("test_error_percent")
        print(f"\n## Resume\n\nkilled {r['seconds_since_last_epoch_line']:.1f} s after epoch {r['killed_in_epoch']}'s "
              f"line, {r['killed_after_s']:.0f} s in; the rerun resumed at epoch {r['resumed_at_epoch']} and finished "
              f"in {r['rerun_wall_s']:.0f} s: test error {_pct(r['models'][DEEP]['test_error_percent'])} "
              f"(seed 7 uninterrupted, deep-0w's member 1: {_pct(same_seed)})")  # fmt: skip
    if r := found.get("robust"):
        print(f"\n## Perturbed test set (rotation within ±{r['rotation_deg']:g}°, shift within ±{r['shift_px']:g} px, "
              f"seed {r['seed']})\n\n| model | clean | perturbed |\n|---|---|---|")  # fmt: skip
        for name, e in r["errors"].items():
            print(f"| {name} | {_pct(e['clean'])} | {_pct(e['perturbed'])} |")
    if rows := speed_rows(found):
        print("\n## Compute\n")
        print("\n".join(rows))
