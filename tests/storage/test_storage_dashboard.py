"""The dashboard's reads on every backend: each endpoint answers from SQLite and PostgreSQL
alike, a password in the store's URL never shows, and a PostgreSQL server that goes away while
a page polls is a one-line 503, answered again once it is back."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from storage import Store
from tests.dashboard.dashboard_helpers import (
    fetch,
    fetch_json,
    serving,
    settled_json,
    write_sweep,
)
from tests.storage.tcp_proxy import TcpProxy

PASSWORD = "s3cret-pw"  # trust authentication ignores it; it must never be shown
ENDPOINTS = (
    "/",
    "/sweeps/s",
    "/sweeps/s/trials/3",
    "/api/sweeps",
    "/api/sweeps/s",
    "/api/sweeps/s/front?x=compressed_bytes&y=accuracy",
    "/api/sweeps/s/hypervolume",
    "/api/sweeps/s/layers",
    "/api/sweeps/s/sensitivity",
    "/api/sweeps/s/recommend?max_drop=0.05",
    "/api/sweeps/s/trials?limit=10&where=accuracy%20%3E%3D%200.9",
    "/api/sweeps/s/trials/3",
    "/api/sweeps/s/trials/3/recipe.json",
)


def _with_password(url: str) -> str:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    return parsed.set(password=PASSWORD).render_as_string(hide_password=False)


def test_every_endpoint_answers_on_each_backend(store_url: str) -> None:
    with Store(_with_password(store_url)) as store:
        write_sweep(store, "s", 30)
        with serving(store) as base:
            for path in ENDPOINTS:
                status, _, body = fetch(base + path)
                assert status == 200, (path, body[:300])
                assert PASSWORD.encode() not in body, path
            _, front = settled_json(f"{base}/api/sweeps/s/front?x=compressed_bytes&y=accuracy")
            expected = store.pareto_front("s", {"compressed_bytes": "min", "accuracy": "max"})
            assert sorted(p["number"] for p in front["points"]) == sorted(expected["number"])
            _, page = fetch_json(f"{base}/api/sweeps/s/trials?limit=5&offset=10&order=oldest")
            assert [row["number"] for row in page["rows"]] == [10, 11, 12, 13, 14]


@pytest.mark.slow
def test_a_store_that_goes_away_is_one_line_then_answers_again(postgres: object) -> None:
    server_url = sa.make_url(postgres.url())  # type: ignore[attr-defined]
    proxy = TcpProxy(server_url.host or "127.0.0.1", server_url.port or 5432)
    through = server_url.set(host="127.0.0.1", port=proxy.port, password=PASSWORD)
    try:
        postgres.wipe()  # type: ignore[attr-defined]
        with Store(through.render_as_string(hide_password=False)) as store:
            write_sweep(store, "s", 10)
            with serving(store) as base:
                assert fetch(f"{base}/api/sweeps/s")[0] == 200
                proxy.cut()
                status, _, body = fetch(f"{base}/api/sweeps/s")
                error = json.loads(body)["error"]
                assert status == 503 and "\n" not in error
                assert "***" in error and PASSWORD not in error
                proxy.restore()
                assert fetch(f"{base}/api/sweeps/s")[0] == 200
    finally:
        proxy.close()
        postgres.wipe()  # type: ignore[attr-defined]
