"""``sweep plot`` on a small store built with ``Store.record_trials`` (no Ray, no training)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from storage import Store, TrialRecord
from sweep import _plot, cli
from sweep._output import DiskFullError, OutputError

LAYERS = ("conv1", "conv2", "fc")
FP32 = {
    "fp32_accuracy": 0.98,
    "fp32_compressed_bytes": 100_000.0,
    "fp32_latency_ms": 4.0,
}


def _trial(number: int, amounts: tuple[float, ...], order: str, granularity: str) -> TrialRecord:
    pruned = sum(amounts) / len(amounts)
    metrics = {
        **FP32,
        "accuracy": 0.98 - 0.2 * max(amounts) ** 3,
        "compressed_bytes": round(30_000 * (1 - 0.8 * pruned)),
        "latency_ms": 1.5 - pruned,
    }
    metrics["accuracy_drop"] = FP32["fp32_accuracy"] - metrics["accuracy"]
    layers = {
        n: {"amount": a, "method": "unstructured"} for n, a in zip(LAYERS, amounts, strict=True)
    }
    recipe = {"schema_version": 1, "order": order, "granularity": granularity, "layers": layers}
    return TrialRecord(number=number, state="COMPLETE", recipe=recipe, metrics=metrics)


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/plot.db"
    store = Store(url)
    objectives = {"accuracy": "max", "compressed_bytes": "min", "latency_ms": "min"}
    config = {"layers": list(LAYERS), "fp32_metrics": {"accuracy": 0.98}}
    store.create_sweep("demo", config, objectives)
    trials = [
        _trial(0, (0.5, 0.5, 0.5), "prune_ptq", "per_tensor"),  # uniform
        _trial(1, (0.2, 0.7, 0.4), "prune_qat", "per_channel"),
        _trial(2, (0.8, 0.3, 0.1), "prune_ptq", "per_channel"),
        _trial(3, (0.1, 0.1, 0.9), "prune_qat", "per_tensor"),
    ]
    store.record_trials("demo", trials)
    store.close()
    return url


def test_plot_writes_png_and_offline_html(tmp_path: Path) -> None:
    url = _store(tmp_path)
    out = tmp_path / "plots"
    with pytest.raises(SystemExit) as exit_info:
        cli.app(["plot", "demo", "-o", str(out), "--storage", url])
    assert exit_info.value.code == 0
    png = (out / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    html = (out / "demo.html").read_text()
    # plotly.js inlined (works offline), and the traces that mark the baselines.
    assert "plotly.js" in html and len(html) > 1_000_000 and 'src="https://cdn' not in html
    assert "fp32 baseline" in html and "hypervolume" in html


def test_plot_of_a_sweep_without_trials_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    Store(url).create_sweep("empty", {}, {"accuracy": "max"})
    monkeypatch.setattr("sys.argv", ["sweep", "plot", "empty", "--storage", url])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "no COMPLETE trials" in capsys.readouterr().err


def test_plot_on_a_full_disk_leaves_neither_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTML fails after the PNG was written: neither reaches the folder, no temporary is
    left, and the plots already there stay as they were."""
    url = _store(tmp_path)
    out = tmp_path / "plots"
    out.mkdir()
    (out / "demo.png").write_bytes(b"old")

    def full(data: object, name: str, path: Path) -> None:
        path.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_plot, "_html", full)
    with Store(url) as store, pytest.raises(DiskFullError, match=r"demo\.html: the disk is full"):
        _plot.plot_sweep(store, "demo", out)
    assert [p.name for p in out.iterdir()] == ["demo.png"]
    assert (out / "demo.png").read_bytes() == b"old"


def test_plot_into_a_file_is_a_user_error(tmp_path: Path) -> None:
    url = _store(tmp_path)
    (tmp_path / "plots").write_text("not a folder")
    with Store(url) as store, pytest.raises(OutputError, match="plots is a file; give the folder"):
        _plot.plot_sweep(store, "demo", tmp_path / "plots")
