"""The store becomes unreachable mid-sweep (a real cut of the TCP path to PostgreSQL): the
driver keeps its results, retries with backoff, and loses nothing."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sqlalchemy as sa

from storage import Store
from sweep import parse_config, run_sweep
from tests.storage.conftest import PostgresServer
from tests.storage.tcp_proxy import TcpProxy

OUTAGE_S = 9.0  # longer than the store's own retries (about 5 s): the driver's backoff must act


@pytest.mark.slow
def test_a_store_outage_loses_no_result(
    local_ray: None, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    schema = postgres.create_schema()
    direct = postgres.url(schema)
    url = sa.make_url(direct)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    config = parse_config(
        {
            "name": "outage",
            "task": "synthetic",
            "task_settings": {"trial_seconds": 0.4},
            "budget": {"n_trials": 16},
            "resources": {"max_concurrent": 2},
        }
    )
    failure: list[BaseException] = []

    def sweep() -> None:
        try:
            run_sweep(config, Store(through_proxy))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    caplog.set_level(logging.WARNING, logger="sweep")
    observer = Store(direct)
    try:
        thread = threading.Thread(target=sweep)
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sweeps = {s.name: s for s in observer.list_sweeps()}
            if "outage" in sweeps and sweeps["outage"].counts["COMPLETE"] >= 3:
                break
            time.sleep(0.2)
        stored_before = len(observer.trials("outage"))
        proxy.cut()
        time.sleep(OUTAGE_S)
        proxy.restore()
        thread.join(timeout=180)
        assert not thread.is_alive() and not failure, failure

        trials = observer.trials("outage")
        assert list(trials["number"]) == list(range(16))  # none lost, none twice
        assert set(trials["state"]) == {"COMPLETE"}
        assert observer.get_sweep("outage").status == "FINISHED"
        assert stored_before < 16, "the outage should hit a running sweep"
        # The driver's own backoff ran (not only the store's short retries).
        assert any("store write failed" in r.getMessage() for r in caplog.records)
    finally:
        proxy.close()
        observer.close()
        postgres.drop_schema(schema)
