"""The estimate's history: bounded, served at /tbg/history, kept across a restart in its file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from estimator.online import OnlineConfig
from proxy.app import make_app, make_runner
from proxy.config import ConfigError, build_config
from proxy.shadow.config import parse_shadow_config
from proxy.shadow.history import History, HistoryFile, Point, Series
from proxy.shadow.history_config import HistoryConfig
from proxy.shadow.state import ShadowState
from proxy.shadow.wiring import SHADOW
from tests.shadow.conftest import FakeLLM, Stack, serve, worker_env

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def point(at: float, estimate: float | None = 0.01) -> Point:
    series = (Series("u", "m", "likelihood", estimate, 0.0, 0.02, 4, 1, at - 1),)
    return Point(at, series, (("dropped", 0), ("failed", 0), ("replayed", 2), ("sampled", 2)))


async def history_json(stack: Stack, query: str = "") -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg/history" + query)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_points_round_trip_through_json() -> None:
    p = point(100.0, None)
    assert Point.from_json(orjson.loads(orjson.dumps(p.to_json()))) == p


def test_the_ring_is_bounded(tmp_path: Path) -> None:
    config = HistoryConfig(points=5, interval_seconds=1.0)
    ring = History(config, view=lambda: pytest.fail("not read"))
    for i in range(12):
        ring._ring.append(point(float(i)))
    assert [p.at for p in ring.points()] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert [p.at for p in ring.points(since=9.0)] == [10.0, 11.0]


def test_file_is_compacted_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    f = HistoryFile(str(path), points=4)
    ring: list[Point] = []
    for i in range(20):
        ring = [*ring, point(float(i))][-4:]
        f.append(ring[-1], ring)
        assert len(path.read_bytes().splitlines()) < 8  # never twice the capacity
    with path.open("ab") as out:
        out.write(b'{"at": 99, "estim')  # a crash mid-write
    points, bad = HistoryFile(str(path), points=4).load()
    assert bad == 1
    assert [p.at for p in points] == [17.0, 18.0, 19.0]  # the last 4 lines, one of them torn


def test_config_checks_the_directory(tmp_path: Path) -> None:
    ok = parse_shadow_config({"history": {"path": str(tmp_path / "h.jsonl"), "points": 10}})
    assert ok.history == HistoryConfig(
        points=10, interval_seconds=15.0, path=str(tmp_path / "h.jsonl")
    )
    up = {"name": "u", "base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError) as err:
        build_config({"upstreams": [up], "shadow": {"history": {
            "path": str(tmp_path / "missing" / "h.jsonl"), "interval_seconds": 0.5}}}, {})  # fmt: skip
    text = str(err.value)
    assert "shadow.history.path" in text and "does not exist" in text
    assert "shadow.history.interval_seconds" in text  # every bad field at once


async def start(fake: FakeLLM, shadow: dict[str, Any]) -> tuple[Stack, list[web.AppRunner]]:
    base, upstream = await serve(fake.app())
    shadow = {"enabled": True, "sample_rate": 1.0, "replays_per_minute": 1e6, **shadow}
    up = {"name": "fake", "base_url": f"{base}/v1", "models": ["m"]}
    app = make_app(build_config({"upstreams": [up], "shadow": shadow}, worker_env()))
    root, runner = await serve(app, make_runner(app))
    return Stack(fake, f"{base}/v1", f"{root}/v1", app[SHADOW], app), [runner, upstream]


async def test_history_is_served_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    shadow = {"history": {"interval_seconds": 1, "points": 50, "path": str(path)}}
    first, runners = await start(FakeLLM(flip_replays={1}), shadow)
    try:
        async with AsyncOpenAI(base_url=first.proxy_url, api_key="k", max_retries=0) as oai:
            for _ in range(3):
                await oai.chat.completions.create(**CHAT)
        assert await first.tap.idle(20.0)
        for _ in range(40):
            served = await history_json(first)
            if any(p["estimates"] and p["estimates"][0]["pairs"] for p in served["points"]):
                break
            await asyncio.sleep(0.1)
        assert served["interval_seconds"] == 1.0 and served["capacity"] == 50
        assert served["persisted"] is True
        last = served["points"][-1]
        (series,) = last["estimates"]
        view = first.tap.view()
        ((key, snap, updated),) = tuple(view.snapshots())
        assert (series["upstream"], series["model_name"]) == key == ("fake", "m")
        assert series["pairs"] == snap.pairs > 0 and series["estimate"] == snap.estimate
        assert series["last_update"] == updated
        assert last["accounting"] == view.totals()
        newer = await history_json(first, f"?since={last['at']}")
        assert all(p["at"] > last["at"] for p in newer["points"])
        async with httpx.AsyncClient() as http:
            url = first.proxy_url.removesuffix("/v1") + "/tbg/history?since=yesterday"
            bad = await http.get(url)
        assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]
    finally:
        for runner in runners:
            await runner.cleanup()  # the proxy stops: its final point is written
    on_disk = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert on_disk[-1]["estimates"][0]["pairs"] == snap.pairs

    second, runners = await start(FakeLLM(), shadow)
    try:
        again = await history_json(second)
        kept = again["points"][: len(on_disk)]  # then the new process's own points, if any yet
        assert [p["at"] for p in kept] == [p["at"] for p in on_disk]
        assert kept[-1]["estimates"][0]["pairs"] == snap.pairs
        assert second.tap.view().estimates == ()  # the estimators themselves start again
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_a_failing_point_is_counted_and_the_recorder_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    errors: list[int] = []

    def view() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return ShadowState(OnlineConfig(), 0).publish(len(calls))

    history = History(HistoryConfig.model_construct(points=10, interval_seconds=0.01), view)
    history.on_internal_error = lambda: errors.append(1)
    await history.start()
    for _ in range(200):
        if len(history.points()) >= 2:
            break
        await asyncio.sleep(0.01)
    await history.stop()
    assert errors == [1] and len(history.points()) >= 2
    assert "history point not recorded" in caplog.text
