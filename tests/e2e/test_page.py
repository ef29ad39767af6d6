"""The model page (GET /) and its data (GET /admin/stats), against the real service.

The browser tests drive Debian's headless chromium over CDP (tests/cdp.py): the page
shows each endpoint's numbers and follows traffic, asks for the admin key when one is
configured and shows nothing without it, and loads nothing from another host.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cdp import Browser, find_chromium
from tests.support import RouterProcess

CONFIG = """
server: {admin_key_env: PAGE_TEST_ADMIN_KEY}
storage: {url: "sqlite+aiosqlite:///router.db"}
providers:
  sim-a: {kind: simulated, ttft_ms: 5, tokens_per_s: 4000}
  sim-b: {kind: simulated, ttft_ms: 20, tokens_per_s: 1000}
routes:
  demo:
    policy: round_robin
    endpoints:
      - {provider: sim-a, model: m, price: {input: 1.0, output: 4.0}}
      - {provider: sim-b, model: m, price: {input: 0.5, output: 2.0, cache_read: 0.05}}
"""
ADMIN_KEY = "page-admin-key-5f3a9c"
Start = Callable[..., RouterProcess]


def send(router: RouterProcess, n: int, *, stream_every: int = 2) -> Counter[str]:
    """``n`` chat requests; how many each endpoint served."""
    served: Counter[str] = Counter()
    with httpx.Client(base_url=router.base_url, timeout=30) as client:
        for i in range(n):
            body = {
                "model": "demo",
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "max_tokens": 8,
                "stream": i % stream_every == 0,
            }
            r = client.post("/chat/completions", json=body)
            r.read()
            assert r.status_code == 200, r.text
            served[r.headers["x-router-endpoint"]] += 1
    return served


def stats(router: RouterProcess, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{router.url}/admin/stats", params=params, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe, why = find_chromium()
    if exe is None:
        pytest.skip(f"no headless browser: {why}")
    return exe


# -- the JSON -------------------------------------------------------------------------


def test_series_count_the_requests_sent(router_factory: Start) -> None:
    router = router_factory(CONFIG)
    served = send(router, 10, stream_every=3)  # round robin: both get streams and not
    body = stats(router, route="demo", window="1h").json()
    assert body["route"] == "demo" and body["routes"] == ["demo"]
    assert body["step_s"] == 60 and len(body["series"]["sim-a"]["t"]) == 60
    for ep in ("sim-a", "sim-b"):
        series = body["series"][ep]
        assert sum(series["requests"]) == served[ep] == sum(series["served"])
        assert sum(series["errors"]) == 0
        busy = [i for i, n in enumerate(series["requests"]) if n]
        assert all(series["tokens_per_s"][i] for i in busy)
        assert all(series["latency_ms_p50"][i] is not None for i in busy)
        assert any(series["ttft_ms_p50"][i] is not None for i in busy)  # the streamed ones
    day = stats(router, route="demo", window="24h").json()
    assert day["step_s"] == 600 and len(day["series"]["sim-a"]["t"]) == 144
    assert sum(day["series"]["sim-b"]["requests"]) == served["sim-b"]
    now = {e["id"]: e for e in body["now"]}
    assert {e["state"] for e in now.values()} == {"healthy"}
    assert now["sim-a"]["stats"]["requests"] == served["sim-a"]
    assert now["sim-a"]["price"] == {
        "input": 1.0,
        "output": 4.0,
        "cache_read": None,
        "cache_write": None,
    }
    assert body["reloads"] and body["reloads"][0]["ok"]

    assert stats(router, route="demo", window="7d").status_code == 400
    missing = stats(router, route="nope")
    assert missing.status_code == 404 and "demo" in missing.json()["error"]["message"]

    health = router.health()
    ep = health["routes"]["demo"]["endpoints"][0]
    assert ep["errors_last_5m"] == 0 and ep["cooldown_left_s"] is None
    assert "output_error_rate" in ep and health["config"]["rejected"] is None


def test_an_admin_key_guards_the_data_and_the_page_holds_no_secret(router_factory: Start) -> None:
    router = router_factory(CONFIG, env={"PAGE_TEST_ADMIN_KEY": ADMIN_KEY})
    assert stats(router).status_code == 401
    assert stats(router, key="wrong").status_code == 403
    assert stats(router, key=ADMIN_KEY).status_code == 200
    page = httpx.get(router.url + "/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assets = [page] + [
        httpx.get(f"{router.url}/page/{a}", timeout=5) for a in ("page.css", "charts.js", "page.js")
    ]
    assert all(a.status_code == 200 for a in assets)
    assert ADMIN_KEY not in "".join(a.text for a in assets)
    assert sum(len(a.content) for a in assets) < 64 * 1024  # the whole page, uncompressed
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere


# -- in a browser ---------------------------------------------------------------------

ROW = 'document.querySelector(\'#now tr[data-endpoint="{ep}"] td[data-k="{k}"]\')'


async def _cell(page: Any, ep: str, k: str) -> str | None:
    return await page.evaluate(f"({ROW.format(ep=ep, k=k)} || {{}}).textContent || null")  # type: ignore[no-any-return]


def test_the_page_shows_each_endpoint_and_follows_traffic(
    router_factory: Start, chromium: str, tmp_path: Path
) -> None:
    router = router_factory(CONFIG)
    first = send(router, 6)

    async def drive() -> None:
        async with Browser(chromium, tmp_path / "profile") as browser, browser.page() as page:
            await page.goto(f"{router.url}/?route=demo&refresh=1")
            for ep in ("sim-a", "sim-b"):
                want = str(first[ep])
                await page.wait_for(
                    f"({ROW.format(ep=ep, k='requests')} || {{}}).textContent === '{want}'"
                )
                assert await _cell(page, ep, "state") == "healthy"
                assert (await _cell(page, ep, "rank") or "").startswith("#")
            charts = await page.evaluate("document.querySelectorAll('#charts svg path').length")
            assert charts >= 2  # lines drawn for the endpoints' series
            assert (
                await page.evaluate(
                    "document.querySelectorAll('#pricing tr[data-endpoint]').length"
                )
                == 2
            )
            more = send(router, 4)
            for ep in ("sim-a", "sim-b"):
                want = str(first[ep] + more[ep])
                await page.wait_for(
                    f"({ROW.format(ep=ep, k='requests')} || {{}}).textContent === '{want}'"
                )
            shot = await page.screenshot(tmp_path / "page.png")
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
            assert page.requests, "the page made no requests"
            elsewhere = [u for u in page.requests if not u.startswith(router.url + "/")]
            assert not elsewhere, elsewhere

    asyncio.run(asyncio.wait_for(drive(), 45))


def test_the_page_asks_for_the_admin_key_and_shows_nothing_without_it(
    router_factory: Start, chromium: str, tmp_path: Path
) -> None:
    router = router_factory(CONFIG, env={"PAGE_TEST_ADMIN_KEY": ADMIN_KEY})
    send(router, 2)

    async def drive() -> None:
        async with Browser(chromium, tmp_path / "profile") as browser, browser.page() as page:
            await page.goto(f"{router.url}/?refresh=1")
            await page.wait_for("!document.getElementById('keybox').hidden")
            assert await page.evaluate("document.getElementById('main').hidden")
            assert await page.evaluate("document.querySelectorAll('#now tr').length") == 0
            assert "sim-a" not in await page.evaluate("document.body.innerText")
            await page.evaluate(
                f"document.getElementById('key').value = '{ADMIN_KEY}';"
                "document.getElementById('keyform').requestSubmit(); true"
            )
            await page.wait_for(f"{ROW.format(ep='sim-a', k='requests')} !== null")
            assert await page.evaluate("document.getElementById('keybox').hidden")
            html = await page.evaluate("document.documentElement.outerHTML")
            assert ADMIN_KEY not in html and ADMIN_KEY not in await page.evaluate(
                "document.body.innerText"
            )

    asyncio.run(asyncio.wait_for(drive(), 40))
