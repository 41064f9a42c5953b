"""The dashboard's JSON endpoints over a real sweep and its scan: each answer is what the store
and the command line say; mistakes are one line; nothing writes; a token guards off loopback."""

from __future__ import annotations

import itertools
import json
import shlex
import urllib.parse
from pathlib import Path

import pytest

from sweep import _recommend
from sweep._dashboard._app import SECURITY_HEADERS
from tests.dashboard.dashboard_helpers import (
    LIVE,
    REAL,
    Served,
    fetch,
    fetch_json,
    serving,
    settled_json,
)
from tests.sweep.cli_runner import run_cli

pytestmark = pytest.mark.slow


def _api(served: Served, path: str, **query: object) -> tuple[int, dict]:
    text = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    return settled_json(f"{served.base}/api/sweeps{path}" + (f"?{text}" if text else ""))


def test_sweeps_lists_each_with_its_progress(served: Served) -> None:
    status, body = _api(served, "")
    assert status == 200
    rows = {row["name"]: row for row in body["sweeps"]}
    assert set(rows) == {REAL, f"{REAL}-sensitivity", LIVE}
    real = rows[REAL]
    assert (real["status"], real["done"], real["budget"], real["kind"]) == (
        "FINISHED",
        24,
        24,
        "sweep",
    )
    assert real["front"] == len(served.store.pareto_front(REAL))
    assert real["trials_per_minute"] > 0 and real["remaining_s"] is None
    assert rows[f"{REAL}-sensitivity"]["kind"] == "scan"
    assert rows[LIVE]["status"] == "RUNNING" and rows[LIVE]["remaining_s"] is not None


def test_the_front_for_any_two_metrics_is_the_stores(served: Served) -> None:
    status, body = _api(served, f"/{REAL}/front", x="latency_ms", y="accuracy")
    assert status == 200
    expected = served.store.pareto_front(REAL, {"latency_ms": "min", "accuracy": "max"})
    assert sorted(p["number"] for p in body["points"]) == sorted(expected["number"])
    assert body["cloud_of"] == served.store.count_trials(REAL, states=["COMPLETE"])
    point = body["points"][0]
    assert point["recipe"]["layers"] == 6 and point["order"]
    assert point["metrics"]["accuracy"] is not None
    where = "accuracy >= 0.9"
    status, body = _api(served, f"/{REAL}/front", x="sparsity", y="accuracy", where=where)
    expected = served.store.pareto_front(REAL, {"sparsity": "max", "accuracy": "max"}, where=where)
    assert sorted(p["number"] for p in body["points"]) == sorted(expected["number"])


def test_hypervolume_grows_over_trials(served: Served) -> None:
    status, body = _api(served, f"/{REAL}/hypervolume")
    assert status == 200
    curve = body["hypervolume"]
    assert len(curve) == len(body["numbers"]) == 24 and curve[-1] > 0
    assert all(a <= b for a, b in itertools.pairwise(curve))


def test_the_heatmap_holds_each_front_trials_recipe(served: Served) -> None:
    status, body = _api(served, f"/{REAL}/layers")
    assert status == 200
    front = served.store.pareto_front(REAL)
    assert body["trials"] == [int(n) for n in front["number"]]
    assert body["layers"] == served.store.get_sweep(REAL).config["layers"]
    for column, number in enumerate(body["trials"]):
        layers = front.set_index("number").loc[number, "recipe"]["layers"]
        for row, layer in enumerate(body["layers"]):
            assert body["amount"][row][column] == layers[layer]["amount"]
            method = body["method"]["names"][body["method"]["cells"][row][column]]
            assert method == layers[layer]["method"]
            granularity = body["granularity"]
            assert (
                granularity["names"][granularity["cells"][row][column]]
                == (layers[layer]["granularity"])
            )


def test_sensitivity_curves_come_from_the_sweeps_scan(served: Served) -> None:
    status, body = _api(served, f"/{REAL}/sensitivity")
    assert status == 200 and body["scan"] == f"{REAL}-sensitivity"
    assert len(body["curves"]) == 6
    assert all(curve["amounts"] == [0.0, 0.3, 0.6, 0.9] for curve in body["curves"])
    assert _api(served, f"/{LIVE}/sensitivity")[1] == {"scan": None, "curves": [], "pending": False}


def test_the_trial_table_pages_and_filters_like_the_cli(served: Served) -> None:
    status, body = _api(served, f"/{REAL}/trials", limit=5, offset=5)
    assert status == 200 and body["total"] == 24
    assert [row["number"] for row in body["rows"]] == [18, 17, 16, 15, 14]  # newest first
    where = "accuracy >= 0.95 and order == 'prune_ptq'"
    status, body = _api(served, f"/{REAL}/trials", where=where, limit=500, order="oldest")
    expected = served.store.trials(REAL, where=where)
    assert [row["number"] for row in body["rows"]] == list(expected["number"])
    assert body["total"] == len(expected)


def test_a_trial_has_its_metrics_beside_fp32_and_the_commands(
    served: Served,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    number = int(served.store.pareto_front(REAL)["number"].iloc[0])
    status, body = _api(served, f"/{REAL}/trials/{number}")
    assert status == 200
    row = served.store.trials(REAL, numbers=[number]).iloc[0]
    metrics = {m["metric"]: m for m in body["metrics"]}
    assert metrics["accuracy"]["value"] == row["accuracy"]
    assert metrics["accuracy"]["fp32"] == row["fp32_accuracy"]
    assert metrics["latency_ms"]["ratio"] == pytest.approx(
        row["latency_ms"] / row["fp32_latency_ms"]
    )
    assert body["measured_on"] == row["measured_on"] and body["timings"] == row["timings"]
    assert [layer["layer"] for layer in body["layers"]] == list(row["recipe"]["layers"])
    assert (
        body["apply_command"] == f"sweep apply real-trial-{number}.json -o real-trial-{number}.onnx"
    )
    status, headers, raw = fetch(f"{served.base}/api/sweeps/{REAL}/trials/{number}/recipe.json")
    assert status == 200
    assert headers["content-disposition"] == f'attachment; filename="real-trial-{number}.json"'
    assert json.loads(raw) == _recommend.recipe_document(served.store, REAL, row)
    # The command line the page shows writes the same file.
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *shlex.split(body["recommend_command"])[1:])
    assert code == 0, err
    assert json.loads((tmp_path / f"real-trial-{number}.json").read_text()) == json.loads(raw)


def test_recommend_picks_what_sweep_recommend_picks(served: Served) -> None:
    for max_drop, latency in ((None, None), ("0.01", None), ("0.05", "0.5"), ("0", "0.0001")):
        status, body = _api(served, f"/{REAL}/recommend", max_drop=max_drop, max_latency_ms=latency)
        assert status == 200
        where = () if latency is None else (f"latency_ms <= {float(latency):g}",)
        goal = _recommend.Goal(
            "compressed_bytes", "min", None if max_drop is None else float(max_drop), where
        )
        try:
            expected = int(_recommend.recommend(served.store, REAL, goal)["number"])
        except _recommend.NoMatchError:
            assert body["trial"] is None and "no trial of real meets" in body["message"]
            continue
        assert body["trial"]["number"] == expected
        assert body["command"].startswith("sweep recommend real --minimize compressed_bytes")


@pytest.mark.parametrize(
    ("path", "query", "status", "message"),
    [
        ("/nope", {}, 404, "sweep 'nope' not found in"),
        (f"/{REAL}/trials/999", {}, 404, "sweep 'real' has no trial 999"),
        (f"/{REAL}/front", {"x": "bogus"}, 400, "x: 'bogus' is not a trial metric"),
        (f"/{REAL}/front", {"x": "accuracy", "y": "accuracy"}, 400, "x and y: both are"),
        (f"/{REAL}/trials", {"where": "accuracy >> 1"}, 400, "accuracy >> 1"),
        (f"/{REAL}/trials", {"where": "recipe = 1; drop table trials"}, 400, "--where"),
        (f"/{REAL}/trials", {"limit": "x"}, 400, "limit: 'x' is not a whole number"),
        (f"/{REAL}/trials", {"state": "DONE"}, 400, "state: 'DONE' is not a trial state"),
        (f"/{REAL}/recommend", {"max_latency_ms": "fast"}, 400, "max_latency_ms: 'fast' is not"),
        (f"/{REAL}/trials", {"limit": "100000"}, 400, "limit: 100000 must be 1 to 500"),
        (f"/{REAL}/recommend", {"max_drop": "2"}, 400, "max_drop: '2' must be a fraction"),
        (f"/{REAL}/recommend", {"minimize": "recipe"}, 400, "minimize: 'recipe' is not a trial"),
    ],
)
def test_mistakes_get_one_line(
    served: Served, path: str, query: dict[str, str], status: int, message: str
) -> None:
    got, body = _api(served, path, **query)
    assert got == status, body
    assert message in body["error"] and "\n" not in body["error"]
    assert served.store.count_trials(REAL) == 24  # nothing written


def test_nothing_writes_and_pages_are_guarded(served: Served) -> None:
    before = served.store.get_sweep(REAL)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert fetch(f"{served.base}/api/sweeps/{REAL}", method=method)[0] == 405
    assert served.store.get_sweep(REAL) == before
    status, headers, _ = fetch(f"{served.base}/sweeps/{REAL}")
    assert status == 200
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    # A loopback dashboard answers only loopback names (DNS rebinding).
    assert fetch(f"{served.base}/api/sweeps", {"host": "evil.example"})[0] == 400
    # Every asset is served from the package: a page names nothing from another origin.
    for page in ("/", f"/sweeps/{REAL}", f"/sweeps/{REAL}/trials/0"):
        html = fetch(served.base + page)[2].decode()
        assert "http://" not in html and "https://" not in html
    assert fetch(f"{served.base}/static/plotly.min.js")[0] == 200


def test_a_token_is_required_when_set(served: Served) -> None:
    token = "t" * 24
    with serving(served.store, token=token, loopback=False) as base:
        status, _, body = fetch(f"{base}/api/sweeps")
        assert status == 401 and b"token is required" in body
        assert fetch(f"{base}/api/sweeps", {"authorization": "Bearer wrong"})[0] == 401
        assert fetch(f"{base}/api/sweeps", {"authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = fetch(f"{base}/sweeps/{REAL}?token={token}&where=accuracy%3E0")
        assert status == 303 and headers["location"] == f"/sweeps/{REAL}?where=accuracy%3E0"
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        assert fetch(f"{base}/api/sweeps", {"cookie": cookie})[0] == 200
        assert (
            fetch(f"{base}/api/sweeps", {"host": "cluster-head:8080", "cookie": cookie})[0] == 200
        )


def test_a_view_never_computed_answers_pending_at_once_then_the_answer(served: Served) -> None:
    url = f"{served.base}/api/sweeps/{REAL}/front?x=sparsity&y=latency_ms"
    with serving(served.store) as base:
        status, first = fetch_json(url.replace(served.base, base))
        assert status == 200 and first["pending"] is True and first["points"] == []
        assert first["version"] == "pending"
        status, body = settled_json(url.replace(served.base, base))
    expected = served.store.pareto_front(REAL, {"sparsity": "max", "latency_ms": "min"})
    assert body["pending"] is False
    assert sorted(p["number"] for p in body["points"]) == sorted(expected["number"])
