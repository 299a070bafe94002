"""The live page `/ui` in a real headless browser (Debian's chromium), loaded from the real proxy
with shadow replay against the fake upstream: the DOM after the page's script ran shows what
`/tbg` says, and the screenshot has the chart drawn in it."""

from __future__ import annotations

import asyncio
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from tests.shadow.conftest import FakeLLM, Stack, serve

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/setup --dev)"
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "secret prompt 42"}],
        "temperature": 0}  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
# three request classes: plain, tools and json_schema chat requests
KINDS: list[dict[str, Any]] = [{}, {"tools": TOOLS}, {"response_format": SCHEMA}]
EST_RGB = (0x1F, 0x5F, 0xBF)  # --est in proxy/ui/style.css: the estimate line and the load dots
BAND_RGB = (196, 217, 247)  # --band at opacity 0.55 over white: the confidence band


async def chromium(profile: Path, *args: str) -> str:
    """Run headless chromium to completion (bounded); its stdout."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Dom(HTMLParser):
    """The elements of the dumped DOM: tag, attributes, own text, and the card they sit in."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self._card: tuple[str, str] | None = None
        self._row: str | None = None  # the request class of the class-table row it sits in

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "article":
            self._card = (a.get("data-upstream", ""), a.get("data-model", ""))
        if tag == "tr":
            self._row = a.get("data-class")
        node = {"tag": tag, "attrs": a, "text": "", "card": self._card, "row": self._row}
        self.elements.append(node)
        if tag not in ("circle", "line", "path", "polygon", "meta", "link", "br"):
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._card = None
        if tag == "tr":
            self._row = None
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1]["text"] += data

    def find(self, **attrs: str) -> list[dict[str, Any]]:
        return [e for e in self.elements if all(e["attrs"].get(k) == v for k, v in attrs.items())]

    def field(self, name: str, card: tuple[str, str] | None = None) -> dict[str, Any]:
        (node,) = [
            e for e in self.find(**{"data-field": name}) if card is None or e["card"] == card
        ]
        return node

    def class_field(self, row: str, name: str) -> dict[str, Any]:
        """A value in the class table's row of request class `row` (route/kind/streaming)."""
        (node,) = [e for e in self.find(**{"data-field": "class-" + name}) if e["row"] == row]
        return node

    def cell(self, row: str) -> dict[str, Any]:
        """The value cell of an accounting row."""
        (tr,) = [e for e in self.find(**{"data-field": row}) if e["tag"] == "tr"]
        after = self.elements[self.elements.index(tr) + 1 :]
        return next(e for e in after if e["tag"] == "td" and "data-value" in e["attrs"])


def parse(html: str) -> Dom:
    dom = Dom()
    dom.feed(html)
    return dom


def shown(x: float) -> float:
    """What the page shows: three significant figures."""
    return float(f"{x:.3g}")


async def get(stack: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(stack.proxy_url.removesuffix("/v1") + path)


async def test_live_page_shows_what_tbg_says(make_stack: Any, tmp_path: Path) -> None:
    fake = FakeLLM(flip_replays={i for i in range(100) if i % 5 == 1})
    stack: Stack = await make_stack(fake, {"history": {"interval_seconds": 1}})
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="k", max_retries=0) as oai:
        for i in range(16):  # spread over a few history points
            headers = {"X-TBG-Replay": "never"} if i % 8 == 0 else {}
            await oai.chat.completions.create(**CHAT, **KINDS[i % 3], extra_headers=headers)
            await asyncio.sleep(0.2)
    assert await stack.tap.idle(20.0)
    for _ in range(50):  # a history point taken after the last trial was folded
        history = (await get(stack, "/tbg/history")).json()
        if history["points"] and history["points"][-1]["at"] > stack.tap.view().published_at:
            break
        await asyncio.sleep(0.1)
    with_estimate = [p for p in history["points"] if p["estimates"] and p["estimates"][0]["pairs"]]
    assert len(with_estimate) >= 2, history

    root = stack.proxy_url.removesuffix("/v1")
    dom = parse(await chromium(tmp_path / "profile", "--dump-dom", f"{root}/ui"))
    report = (await get(stack, "/tbg")).json()  # nothing changed since: no traffic, idle

    assert dom.find(**{"data-rendered": "1"}), "the page's script did not render"
    (est,) = report["estimates"]
    card = (est["upstream"], est["model_name"])
    assert len(dom.find(**{"class": "card"})) == 1
    for name in ("estimate", "lower", "upper", "ceiling"):
        node = dom.field(name, card)
        assert float(node["attrs"]["data-value"]) == est[name], name  # the exact JSON number
        assert float(node["text"]) == shown(est[name]), (name, node["text"])
    for name in ("pairs", "diverged"):
        node = dom.field(name, card)
        assert node["text"] == str(est[name]) == node["attrs"]["data-value"]
    assert est["pairs"] > 0 and est["diverged"] > 0
    assert dom.field("method", card)["text"] == est["method"] == "likelihood"
    expected = "under" if est["upper"] < est["ceiling"] else (
        "over" if est["lower"] > est["ceiling"] else "undecided")  # fmt: skip
    assert dom.field("verdict", card)["attrs"]["data-value"] == expected
    age = dom.field("age", card)
    assert float(age["attrs"]["data-value"]) == est["last_update"]
    assert age["text"].endswith(" ago"), age["text"]

    # T_bg by load: one dot per bucket with an estimate, at /tbg's values
    dots = {e["attrs"]["data-bucket"]: e for e in dom.elements if "data-bucket" in e["attrs"]}
    assert set(dots) == {b for b, s in est["by_load"].items() if s["estimate"] is not None}
    for bucket, dot in dots.items():
        assert float(dot["attrs"]["data-estimate"]) == est["by_load"][bucket]["estimate"]
        assert int(dot["attrs"]["data-pairs"]) == est["by_load"][bucket]["pairs"]
    # T_bg by request class: one row per class /tbg lists, at its values
    rows = {e["attrs"]["data-class"] for e in dom.elements if "data-class" in e["attrs"]}
    classes = {f"{c['route']}/{c['kind']}/{c['streaming']}": c for c in est["by_class"]}
    assert rows == set(classes) == {"chat/plain/whole", "chat/tools/whole", "chat/json/whole"}
    for row, c in classes.items():
        for name in ("estimate", "lower", "upper"):
            node = dom.class_field(row, name)
            assert float(node["attrs"]["data-value"]) == c[name], (row, name)
            assert float(node["text"]) == shown(c[name]), (row, name, node["text"])
        for name in ("pairs", "diverged"):
            node = dom.class_field(row, name)
            assert node["text"] == str(c[name]) == node["attrs"]["data-value"], (row, name)
        assert dom.class_field(row, "method")["text"] == c["method"] == "likelihood"
    assert sum(c["pairs"] for c in classes.values()) == est["pairs"]
    assert sum(c["diverged"] for c in classes.values()) == est["diverged"]
    # T_bg over time: the line and its band, drawn from the history
    time_chart = [e for e in dom.elements if e["attrs"].get("class") == "chart-time"]
    assert len(time_chart) == 1
    assert dom.find(**{"class": "est"}) and dom.find(**{"class": "band"})

    acc = report["accounting"]
    for name in ("eligible", "sampled", "replayed", "dropped", "failed", "dropped:opted_out"):
        cell = dom.cell(name)
        want = report["eligible"] if name == "eligible" else (
            report["dropped_by_reason"]["opted_out"] if name.startswith("dropped:") else acc[name])  # fmt: skip
        assert int(cell["attrs"]["data-value"]) == want == int(cell["text"]), name
    assert report["eligible"] == 16
    assert acc == {"sampled": 16, "replayed": 14, "dropped": 2, "failed": 0}
    assert report["dropped_by_reason"] == {"opted_out": 2}
    assert dom.find(**{"data-reason": "opted_out"})
    assert dom.find(**{"data-field": "drop:opted_out"})  # named under "what is not measured"
    assert dom.find(**{"data-field": "not-eligible"}) and dom.find(**{"data-field": "classes"})
    assert "secret" not in "".join(e["text"] for e in dom.elements)

    # The screenshot: the charts' colours are on the page, so they were drawn, not just built.
    from PIL import Image

    shot = tmp_path / "ui.png"
    await chromium(tmp_path / "profile", "--window-size=1200,1400", f"--screenshot={shot}",
                   f"{root}/ui")  # fmt: skip
    with Image.open(shot) as img:
        assert img.size == (1200, 1400)
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).max(axis=2) <= 12).sum())

    # the estimate (line, load dot and its error bar) and the band over white
    assert count(EST_RGB) > 100 and count(BAND_RGB) > 200, (count(EST_RGB), count(BAND_RGB))


async def test_tbg_format_html_is_the_page(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    page, alias = await get(stack, "/ui"), await get(stack, "/tbg?format=html")
    assert page.status_code == alias.status_code == 200
    assert page.content == alias.content and b'<script src="ui/app.js">' in page.content
    assert alias.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in alias.headers["Content-Security-Policy"]
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        resp = await get(stack, path)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(kind)
    assert (await get(stack, "/tbg")).headers["Content-Type"].startswith("application/json")


async def test_page_without_shadow_replay_says_so(tmp_path: Path) -> None:
    base, upstream = await serve(FakeLLM().app())
    app = make_app(build_config({"upstreams": [{"name": "fake", "base_url": f"{base}/v1"}]}, {}))
    root, runner = await serve(app, make_runner(app))
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{root}/tbg/history")).status_code == 404
            assert (await http.get(f"{root}/tbg")).json()["shadow"] == "off"
        dom = parse(await chromium(tmp_path / "profile", "--dump-dom", f"{root}/tbg?format=html"))
    finally:
        await runner.cleanup()
        await upstream.cleanup()
    (off,) = dom.find(id="off")
    assert "hidden" not in off["attrs"]
    (message,) = dom.find(id="off-message")
    assert "Shadow replay is off" in message["text"]
