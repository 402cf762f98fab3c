"""A refresh with nothing changed is one small read: the overrides, the controllers' records and
the configuration's stamp in one request; the configuration is read again only when an apply
has moved the stamp, and then at once, not at the next interval. On the local store and on
DynamoDB through moto's HTTP server (whose requests are counted)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from reconciler.runtime.client import FlagClient
from reconciler.runtime.sources import DynamoDBSource, SQLiteSource
from tests.deployments import Deployment
from tests.test_cli import invoke

FLAG = "ai_model_selection"


class Reads:
    """Counts the source's reads (DynamoDB requests, or SQLite queries) and their bytes."""

    def __init__(self, source: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.sizes: list[int] = []
        if isinstance(source, DynamoDBSource):
            events = source.client.meta.events

            def counted(http_response: Any, model: Any, **_: Any) -> None:
                self.calls[model.name] += 1
                self.sizes.append(len(http_response.content))

            events.register("after-call.dynamodb", counted)
        else:
            assert isinstance(source, SQLiteSource)
            query = source._query

            def counted_query(sql: str, *args: Any) -> list[tuple[Any, ...]]:
                rows = query(sql, *args)
                self.calls["query"] += 1
                self.sizes.append(sum(len(str(v)) for row in rows for v in row))
                return rows

            monkeypatch.setattr(source, "_query", counted_query)

    def reset(self) -> None:
        self.calls.clear()
        self.sizes.clear()


def test_a_refresh_with_no_change_is_one_small_read(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(deployment.source, monkeypatch)
    flags = FlagClient(deployment.source, background=False)
    assert flags.ready
    one = "BatchGetItem" if isinstance(deployment.source, DynamoDBSource) else "query"
    for _ in range(3):
        reads.reset()
        assert flags.refresh()
        assert reads.calls == {one: 1}, reads.calls  # no Scan, no configuration read
        assert sum(reads.sizes) < 1024, reads.sizes
    assert flags.decide(FLAG, {"user_id": "u1"}).enabled

    # An apply moves the stamp: the next refresh reads the configuration, once.
    path = deployment.root / "flags.d" / f"{FLAG}.yaml"
    path.write_text(path.read_text().replace("enabled: true", "enabled: false", 1))
    assert invoke("--apply", str(deployment.root), "--yes")[0] == 0
    reads.reset()
    assert flags.refresh()
    assert sum(reads.calls.values()) >= 2  # the overrides, then the configuration
    assert not flags.decide(FLAG, {"user_id": "u1"}).enabled
    reads.reset()
    assert flags.refresh()
    assert reads.calls == {one: 1}
    flags.close()
