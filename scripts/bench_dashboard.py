"""The web dashboard at scale: API latency and first paint on a big sweep, SQLite and PostgreSQL.

Fills a store with sweep ``bench``: ``--trials`` synthetic COMPLETE trials of ``--layers`` layers
(``bench_store.Synthetic``, 3 objectives), plus a sensitivity scan of the same layers (sweep
``bench-sensitivity``, which ``bench`` names as its ``search_space.bounds_from``). Then serves
``sweep._dashboard.create_app(store)`` with uvicorn on a free port of 127.0.0.1 and times:

- ``api_ms``: every JSON endpoint, ``--repeats`` times each with a plain HTTP client: the first
  (``cold``) call and the median of the others (``warm_median``), with the status and size; a
  view computed for the first time answers at once with a stand-in marked pending, and
  ``answer_after_ms`` is how long the answer itself took to come
  (the dashboard caches answers until the sweep changes: cold is a query's cost, warm a poll's),
  right after the dashboard starts; ``settled_api_ms``: the same on a dashboard that has run for
  ``--settle-s`` seconds first (it computes what each sweep's page opens on when it starts);
- ``first_paint_ms`` and ``ready_ms``: the pages in headless Chromium (``--chromium``, through
  Playwright), median of ``--page-repeats`` loads in fresh contexts (an empty browser cache):
  the first contentful paint, and the time until the page marks its first data render done
  (``<body data-ready>``; null when a page never does within ``--page-timeout-s``), and
  ``ready_cached_ms``: the same page loaded again in the same context (scripts cached).

SQLite uses a temporary file unless ``--sqlite-file`` names one: a file that already holds the
sweeps of the same ``--trials`` and ``--layers`` is used as it is (the fill of 100k trials of 300
layers takes many minutes), and ``fill_s`` is reported only when a fill happened. PostgreSQL
uses a temporary schema on ``--postgres-url``, dropped at the end, unless ``--postgres-schema``
names one to keep and reuse. ``over_goal`` lists what took longer than ``goal_api_ms`` (cold or
warm) or ``goal_first_paint_ms``, ``errors`` every answer that was not 200 and every page that
failed or reported a problem. Prints one JSON object::

    python scripts/bench_dashboard.py [--trials 100000] [--layers 300] [--backends sqlite,postgres]
        [--sqlite-file FILE] [--postgres-url URL] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store

from storage import Store, SweepNotFoundError, TrialRecord

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

SWEEP = "bench"
SCAN = f"{SWEEP}-sensitivity"
SCAN_AMOUNTS = (0.3, 0.5, 0.7, 0.9)
MAX_DROP = 0.02
GOAL_API_MS = 200
GOAL_FIRST_PAINT_MS = 1000
# Records when <body> gets data-ready (ms since navigation start), however the page sets it.
READY_SCRIPT = """
(() => {
  const mark = () => {
    if (window.__benchReady === undefined && document.body && document.body.dataset.ready) {
      window.__benchReady = performance.now();
    }
  };
  new MutationObserver(mark).observe(document, {
    subtree: true, childList: true, attributes: true, attributeFilter: ["data-ready"],
  });
})();
"""
FCP_SCRIPT = (
    "() => { const e = performance.getEntriesByType('paint')"
    ".find(p => p.name === 'first-contentful-paint'); return e ? e.startTime : null; }"
)


def _elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 1)


# -- filling the store ------------------------------------------------------------------------


def _holds(store: Store, name: str, config: dict[str, Any], complete: int) -> bool:
    """Whether sweep ``name`` exists with this config and ``complete`` COMPLETE trials only."""
    try:
        info = store.get_sweep(name)
    except SweepNotFoundError:
        return False
    others = sum(count for state, count in info.counts.items() if state != "COMPLETE")
    return info.config == config and info.counts.get("COMPLETE", 0) == complete and not others


def _scan_records(data: bench_store.Synthetic) -> list[TrialRecord]:
    """The reference (nothing pruned), then each layer alone at each of ``SCAN_AMOUNTS``: the
    drop grows with the layer's sensitivity and the amount to the fourth power."""
    granularity = bench_store.GRANULARITIES[0]
    reference_drop = 0.003
    cases: list[tuple[str | None, float]] = [(None, 0.0)]
    cases += [(name, amount) for name in data.names for amount in SCAN_AMOUNTS]
    total = int(data.weights.sum())
    index = {name: i for i, name in enumerate(data.names)}
    records = []
    for number, (layer, amount) in enumerate(cases):
        layers = {
            name: {
                "amount": amount if name == layer else 0.0,
                "method": "unstructured",
                "granularity": granularity,
            }
            for name in data.names
        }
        drop = reference_drop
        pruned = 0.0
        if layer is not None:
            drop += 0.05 * float(data.sensitivity[index[layer]]) * amount**4
            pruned = amount * float(data.weights[index[layer]])
        accuracy = round(max(0.05, 0.99 - drop), 4)
        started = bench_store.T0 + timedelta(seconds=number)
        records.append(
            TrialRecord(
                number=number,
                state="COMPLETE",
                recipe={
                    "schema_version": 1,
                    "order": "prune_ptq",
                    "granularity": granularity,
                    "layers": layers,
                },
                metrics={
                    "accuracy": accuracy,
                    "fp32_accuracy": 0.99,
                    "accuracy_drop": round(0.99 - accuracy, 6),
                    "compressed_bytes": int(1.05 * (total - pruned) + 4_000),
                    "size_bytes": total + 4_000,
                    "latency_ms": 2.5,
                    "sparsity": pruned / total,
                    "params": total,
                    "nonzero_params": int(total - pruned),
                },
                started_at=started,
                finished_at=started + timedelta(seconds=1),
                worker="bench-worker",
            )
        )
    return records


def _fill(store: Store, data: bench_store.Synthetic, args: argparse.Namespace) -> float | None:
    """Store both sweeps unless the store holds them already; the seconds it took, or None."""
    layers = len(data.names)
    scan_config: dict[str, Any] = {
        "bench": "dashboard",
        "task": "bench",
        "kind": "sensitivity",
        "layers": list(data.names),
        "fp32_metrics": {"accuracy": 0.99},
        "sensitivity": {
            "amounts": list(SCAN_AMOUNTS),
            "granularities": [bench_store.GRANULARITIES[0]],
            "finetune_epochs": 0,
        },
    }
    # What the driver stores that the dashboard reads: the budget, the layers, fp32 figures.
    config: dict[str, Any] = {
        "bench": "dashboard",
        "task": "bench",
        "budget": {"n_trials": args.trials},
        "layers": list(data.names),
        "fp32_metrics": {"accuracy": 0.99},
        "search_space": {"bounds_from": {"sensitivity": SCAN, "max_drop": MAX_DROP}},
    }
    scan_trials = 1 + layers * len(SCAN_AMOUNTS)
    has_scan = _holds(store, SCAN, scan_config, scan_trials)
    has_sweep = _holds(store, SWEEP, config, args.trials)
    if has_scan and has_sweep:
        return None
    started = time.perf_counter()
    if not has_scan:
        store.create_sweep(SCAN, scan_config, bench_store.OBJECTIVES_3, replace=True)
        records = _scan_records(data)
        for start in range(0, len(records), args.batch):
            store.record_trials(SCAN, records[start : start + args.batch])
        store.set_sweep_status(SCAN, "FINISHED")
    if not has_sweep:
        store.create_sweep(SWEEP, config, bench_store.OBJECTIVES_3, replace=True)
        for start in range(0, args.trials, args.batch):
            size = min(args.batch, args.trials - start)
            store.record_trials(SWEEP, data.records(start, size))
            if args.progress:
                print(
                    f"filled {start + size}/{args.trials} ({_elapsed(started)} s)", file=sys.stderr
                )
        store.set_sweep_status(SWEEP, "FINISHED")
    return _elapsed(started)


# -- serving and timing -----------------------------------------------------------------------


@contextmanager
def _serving(store: Store) -> Iterator[str]:
    """The dashboard of ``store`` served in a thread of this process; yields its base URL."""
    from sweep._dashboard import running  # the package under test: imported when needed

    with running(store) as listening:
        yield listening.url.rstrip("/")


def _get(url: str, timeout: float) -> tuple[int, bytes, float]:
    """Status, body and milliseconds of ``GET url`` (a new connection, as a browser's first);
    status 0 and the reason as the body when no answer came (a timeout, a dropped connection)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:  # URLError, TimeoutError, ConnectionError: reported as status 0
        status, body = 0, f"no answer: {exc}".encode()
    return status, body, 1000 * (time.perf_counter() - started)


def _pending(body: bytes) -> bool:
    """Whether an answer stands in for a view the dashboard is still computing."""
    try:
        found = json.loads(body)
    except ValueError:
        return False
    if not isinstance(found, dict):
        return False
    rows = found.get("sweeps") or []
    return found.get("pending") is True or any(row.get("pending") for row in rows)


def _time_endpoint(base: str, path: str, args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    """``--repeats`` calls; and, when the first answered ``pending``, the time until the
    answer itself came (asked again every 50 ms, as a page asks at each poll)."""
    started = time.perf_counter()
    times: list[float] = []
    statuses: list[int] = []
    bodies: list[bytes] = []
    for _ in range(args.repeats):
        status, body, ms = _get(base + path, args.http_timeout_s)
        times.append(ms)
        statuses.append(status)
        bodies.append(body)
    body = bodies[-1]
    result: dict[str, Any] = {
        "cold": round(times[0], 1),
        "warm_median": round(statistics.median(times[1:]), 1) if len(times) > 1 else None,
        "status": statuses[0],
        "bytes": len(body),
    }
    if _pending(bodies[0]):
        deadline = started + args.http_timeout_s
        while _pending(body) and time.perf_counter() < deadline:
            time.sleep(0.05)
            status, body, _ = _get(base + path, args.http_timeout_s)
            statuses.append(status)
        result["first_pending"] = True
        result["answer_after_ms"] = round(1000 * (time.perf_counter() - started), 1)
        result["bytes"] = len(body)
    if any(status != 200 for status in statuses):
        result["error"] = f"HTTP {sorted(set(statuses))}: {body[:300].decode(errors='replace')}"
    return result, body


def _front_number(body: bytes) -> int | None:
    """The number of the front's first point, from the front endpoint's JSON."""
    try:
        points = json.loads(body).get("points") or []
    except (ValueError, AttributeError):
        return None
    number = points[0].get("number") if points and isinstance(points[0], dict) else None
    return number if isinstance(number, int) else None


def _time_api(base: str, args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """Every endpoint's timings; and the front trial whose pages are timed (None: none)."""
    api = f"/api/sweeps/{SWEEP}"
    paths = [
        "/api/sweeps",
        api,
        f"{api}/front?x=compressed_bytes&y=accuracy",
        f"{api}/hypervolume",
        f"{api}/trials?offset=0&limit=50",
        f"{api}/trials?offset={args.trials // 2}&limit=50&where=accuracy%20%3E%3D%200.5",
        f"{api}/layers",
        f"{api}/sensitivity",
        f"{api}/recommend?max_drop={MAX_DROP}",
    ]
    timings: dict[str, Any] = {}
    number: int | None = None
    for path in paths:
        timings[path], body = _time_endpoint(base, path, args)
        if "/front?" in path:
            number = _front_number(body)
    if number is None:
        timings["front trial"] = {"error": "the front response names no trial: not timed"}
        return timings, None
    for path in (f"{api}/trials/{number}", f"{api}/trials/{number}/recipe.json"):
        timings[path], _ = _time_endpoint(base, path, args)
    return timings, number


class PageError(Exception):
    """A page that did not paint within the timeout."""


@dataclass
class PageLoad:
    """One load of a page: ms from navigation start to the first contentful paint and to
    ``<body data-ready>`` (None: not within the timeout), and what went wrong on the way (a
    script error, a request answered 400 or more)."""

    paint: float
    ready: float | None
    problems: list[str] = field(default_factory=list)


def _load_page(context: BrowserContext, url: str, timeout_ms: float) -> PageLoad:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    problems: list[str] = []
    page = context.new_page()
    try:
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on(
            "response",
            lambda response: (
                problems.append(f"HTTP {response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        page.add_init_script(READY_SCRIPT)
        page.goto(url, timeout=timeout_ms)
        paint = _first_paint(page, timeout_ms)
        try:
            page.wait_for_selector("body[data-ready]", state="attached", timeout=timeout_ms)
        except PlaywrightTimeout:
            return PageLoad(paint, None, problems)  # never marked ready: reported as null
        ready = float(page.evaluate("() => window.__benchReady ?? performance.now()"))
        return PageLoad(paint, ready, problems)
    finally:
        page.close()


def _first_paint(page: Page, timeout_ms: float) -> float:
    """The page's first contentful paint, polled from here: ``page.wait_for_function`` would
    evaluate a string in the page, which the dashboard's CSP (no 'unsafe-eval') forbids."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        paint = page.evaluate(FCP_SCRIPT)
        if paint is not None:
            return float(paint)
        if time.monotonic() > deadline:
            raise PageError(f"no first contentful paint within {timeout_ms / 1000:g} s")
        page.wait_for_timeout(10)


def _median(values: list[float] | list[float | None]) -> float | None:
    """The median, or None when a value is missing."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if len(known) == len(values) and known else None


def _time_pages(base: str, number: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """Per page, medians over ``--page-repeats`` fresh browser contexts, each loading the page
    twice: ``first_paint_ms`` and ``ready_ms`` of the first load (an empty browser cache), and
    ``ready_cached_ms`` of the second (scripts from the cache); ``page_errors`` when a page
    failed or reported problems. ``first_paint`` holds the error when Chromium cannot run."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from sweep._dashboard._browser import NoChromiumError, launch_chromium

    pages = ["/", f"/sweeps/{SWEEP}"]
    if number is not None:
        pages.append(f"/sweeps/{SWEEP}/trials/{number}")
    figures: dict[str, dict[str, float | None]] = {
        "first_paint_ms": {},
        "ready_ms": {},
        "ready_cached_ms": {},
    }
    errors: dict[str, list[str]] = {}
    timeout_ms = 1000 * args.page_timeout_s
    with sync_playwright() as playwright:
        try:
            browser = launch_chromium(playwright, args.chromium)
        except (NoChromiumError, PlaywrightError) as exc:
            return {"first_paint": {"error": _first_line(exc)}}
        try:
            for path in pages:
                first: list[PageLoad] = []
                again: list[PageLoad] = []
                try:
                    for _ in range(args.page_repeats):
                        context = browser.new_context()
                        try:
                            first.append(_load_page(context, base + path, timeout_ms))
                            again.append(_load_page(context, base + path, timeout_ms))
                        finally:
                            context.close()
                except (PlaywrightError, PageError) as exc:
                    errors[path] = [_first_line(exc)]
                    for values in figures.values():
                        values[path] = None
                    continue
                figures["first_paint_ms"][path] = _median([load.paint for load in first])
                figures["ready_ms"][path] = _median([load.ready for load in first])
                figures["ready_cached_ms"][path] = _median([load.ready for load in again])
                problems = sorted({problem for load in first + again for problem in load.problems})
                if problems:
                    errors[path] = problems
        finally:
            browser.close()
    result: dict[str, Any] = dict(figures)
    if errors:
        result["page_errors"] = errors
    return result


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- backends ---------------------------------------------------------------------------------


def _bench_backend(
    url: str, data: bench_store.Synthetic, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with Store(url) as store:
        fill_s = _fill(store, data, args)
        if fill_s is not None:
            result["fill_s"] = fill_s
        with _serving(store) as base:
            # Right after start, while the app computes what the pages open on.
            result["api_ms"], number = _time_api(base, args)
            result.update(_time_pages(base, number, args))
        with _serving(store) as base:
            # As a user finds a dashboard that has been up a while: started, then settled.
            time.sleep(args.settle_s)
            result["settled_api_ms"], _ = _time_api(base, args)
    return result


def _sqlite(args: argparse.Namespace, data: bench_store.Synthetic) -> dict[str, Any]:
    if args.sqlite_file is not None:
        path = Path(args.sqlite_file)
        result = _bench_backend(f"sqlite:///{path}", data, args)
        result["file_mb"] = round(path.stat().st_size / 2**20, 1)
        return result
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        path = Path(tmp) / "bench.db"
        result = _bench_backend(f"sqlite:///{path}", data, args)
        result["file_mb"] = round(path.stat().st_size / 2**20, 1)
        return result


def _postgres(args: argparse.Namespace, data: bench_store.Synthetic) -> dict[str, Any]:
    schema = bench_store.postgres_schema(args.postgres_url, "bench_dashboard", args.postgres_schema)
    try:
        with schema as url:
            return _bench_backend(url, data, args)
    except bench_store.SchemaError as exc:
        return {"error": str(exc)}


def _over_goal(report: dict[str, Any], backends: list[str]) -> list[str]:
    over = []
    for backend in backends:
        result = report[backend]
        for key in ("api_ms", "settled_api_ms"):
            for path, timing in result.get(key, {}).items():
                figures = [timing.get("cold"), timing.get("warm_median")]
                if any(f is not None and f > GOAL_API_MS for f in figures):
                    over.append(f"{backend} {path} ({key})")
        for key in ("first_paint_ms", "ready_ms", "ready_cached_ms"):
            for path, ms in result.get(key, {}).items():
                if ms is not None and ms > GOAL_FIRST_PAINT_MS:
                    over.append(f"{backend} page {path} ({key})")
    return over


def _errors(report: dict[str, Any], backends: list[str]) -> list[str]:
    """Every failure in the report, one line each: a backend, an endpoint or a page."""
    found = []
    for backend in backends:
        result = report[backend]
        if "error" in result:
            found.append(f"{backend}: {result['error']}")
        for path, timing in result.get("api_ms", {}).items():
            if "error" in timing:
                found.append(f"{backend} {path}: {timing['error']}")
        if "error" in result.get("first_paint", {}):
            found.append(f"{backend} first paint: {result['first_paint']['error']}")
        for path, problems in result.get("page_errors", {}).items():
            found += [f"{backend} page {path}: {problem}" for problem in problems]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1_000, help="trials per bulk insert")
    parser.add_argument("--repeats", type=int, default=5, help="calls per endpoint")
    parser.add_argument("--page-repeats", type=int, default=3, help="loads per page")
    parser.add_argument("--page-timeout-s", type=float, default=30.0)
    parser.add_argument("--http-timeout-s", type=float, default=300.0)
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--sqlite-file", default=None, help="SQLite file to fill or reuse")
    parser.add_argument("--postgres-url", default=bench_store.DEFAULT_POSTGRES_URL)
    parser.add_argument("--postgres-schema", default=None, help="schema to fill or reuse, and keep")
    parser.add_argument("--chromium", help="Chromium binary (default: as the tests find it)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=20.0,
        help="seconds a second dashboard runs before its endpoints are timed (settled_api_ms)",
    )
    parser.add_argument("--progress", action="store_true", help="fill progress on stderr")
    parser.add_argument("--output", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = sorted(set(backends) - {"sqlite", "postgres"})
    if unknown or not backends:
        parser.error(f"--backends: {', '.join(unknown) or 'none'}: use sqlite and/or postgres")
    if args.repeats < 1 or args.page_repeats < 1 or args.trials < 1 or args.layers < 1:
        parser.error("--trials, --layers, --repeats and --page-repeats must be at least 1")

    data = bench_store.Synthetic(args.layers)
    report: dict[str, Any] = {"trials": args.trials, "layers": args.layers, "repeats": args.repeats}
    for backend in backends:
        report[backend] = _sqlite(args, data) if backend == "sqlite" else _postgres(args, data)
    report["goal_api_ms"] = GOAL_API_MS
    report["goal_first_paint_ms"] = GOAL_FIRST_PAINT_MS
    report["over_goal"] = _over_goal(report, backends)
    report["errors"] = _errors(report, backends)
    text = json.dumps(report, indent=2)
    if args.output is not None:
        Path(args.output).write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
