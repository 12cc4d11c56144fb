"""The browser pages: served by the server itself, and driven in Debian's chromium through Playwright.

Chromium's fake microphone plays the Harvard clip ("The birch canoe slid on the
smooth planks. ...") in a loop, so the live page transcribes real speech end to end.
Screenshots go to the test's tmp_path, and to docs/screenshots/ with WLK_SAVE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import run, running_server
from whisperlivekit.app import create_app
from whisperlivekit.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
HARVARD_WAV = Path("/usr/share/codec2/raw/speech_orig_16k.wav")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def test_pages_and_static_files_are_served_with_their_content_types():
    client = TestClient(create_app(Settings(preload=False)))
    for path in ("/", "/dashboard"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "<!doctype html>" in response.text.lower()
    assert 'src="static/app.js"' in client.get("/").text
    assert 'src="static/dashboard.js"' in client.get("/dashboard").text
    for name in ("app.js", "recorder.js", "pcm-worklet.js", "connection.js", "transcript.js", "share.js", "dashboard.js"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and "javascript" in response.headers["content-type"], name
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/missing.js").status_code == 404


# --- in a real browser ---------------------------------------------------------------


def _async_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    module = pytest.importorskip("playwright.async_api", reason="pip install playwright (no `playwright install` needed)")
    return module.async_playwright


async def _launch(playwright, tmp_path: Path, fake_audio: Path = None):
    args = list(CHROMIUM_ARGS)
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}")
    return await playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=args,
        viewport={"width": 1100, "height": 760},
    )


async def _screenshot(page, tmp_path: Path, name: str, save_to_docs: bool = True) -> Path:
    path = tmp_path / name
    await page.screenshot(path=str(path), full_page=True)
    if save_to_docs and os.environ.get("WLK_SAVE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / name)
    return path


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


async def _wait_for(condition, timeout_s: float, interval_s: float = 0.25):
    """Polls an async condition until it returns something truthy; returns it, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(interval_s)
    return None


async def _fits_phone_width(page) -> bool:
    await page.set_viewport_size({"width": 390, "height": 844})
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.browser
@pytest.mark.parametrize("flags,capture", [((), "MediaRecorder"), (("--pcm-input",), "AudioWorklet")], ids=["webm", "pcm"])
def test_live_page_transcribes_the_microphone_and_finishes_on_stop(tmp_path, flags, capture):
    async_playwright = _async_playwright()
    if not HARVARD_WAV.exists():
        pytest.skip(f"{HARVARD_WAV} is missing: apt-get install -y codec2-examples")

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=HARVARD_WAV)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            assert await page.get_by_test_id("ws-url").input_value() == server.ws_url
            await page.get_by_test_id("record-button").click()

            async def heard_birch_canoe():
                return "birch canoe" in _normalised(await page.get_by_test_id("lines").inner_text()
                                                    + " " + await page.get_by_test_id("buffer").inner_text())
            heard = await _wait_for(heard_birch_canoe, timeout_s=60)
            status = await page.get_by_test_id("status").inner_text()
            assert heard, f"no 'birch canoe' after 60 s; status {status!r}; page:\n{await page.inner_text('body')}"
            async def heard_last_sentence():  # not asserted: only so the screenshot shows the whole clip once
                return "steady work" in _normalised(await page.get_by_test_id("lines").inner_text()
                                                    + " " + await page.get_by_test_id("buffer").inner_text())
            await _wait_for(heard_last_sentence, timeout_s=20)
            assert "cpu" in (await page.get_by_test_id("device").inner_text()).lower()
            assert capture in await page.get_by_test_id("audio-mode").inner_text()
            assert await page.get_by_test_id("status").get_attribute("data-state") == "recording"

            await page.get_by_test_id("record-button").focus()  # Stop from the keyboard
            await page.keyboard.press("Enter")
            finished = page.locator('[data-testid="status"][data-state="finished"]')
            await finished.wait_for(timeout=60_000)
            assert "finished" in (await finished.inner_text()).lower()
            received = await page.evaluate("window.wlkDebug.received")
            assert received[0] == "config" and received[-1] == "ready_to_stop", received
            assert await page.get_by_test_id("error").is_hidden()
            await _screenshot(page, tmp_path, "live.png", save_to_docs=capture == "MediaRecorder")
            async with page.expect_download() as download_info:
                await page.get_by_test_id("download-button").click()
            download = await download_info.value
            assert download.suggested_filename.endswith(".txt")
            saved = tmp_path / download.suggested_filename
            await download.save_as(str(saved))
            assert "birch" in saved.read_text().lower() and "Speaker" in saved.read_text()
            await browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
            await page.get_by_test_id("copy-button").click()
            assert await page.evaluate("navigator.clipboard.readText()") == saved.read_text()

            assert await _fits_phone_width(page), "the live page overflows a phone-width screen"
            await _screenshot(page, tmp_path, "live-phone.png", save_to_docs=False)
            await browser.close()

    with running_server(*flags) as server:
        run(scenario(server))


async def _hold_connections(ws_url: str, count: int):
    """`count` idle /asr connections, opened one after another; each holds a slot once its config arrives
    (the server needs `--min-audio-rate 0`, or silent connections lose their slot after `--start-grace`)."""
    import websockets

    held = []
    for _ in range(count):
        ws = await websockets.connect(ws_url, open_timeout=30)
        config = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert config["type"] == "config", config
        held.append((ws, config))
    return held


async def _card_counts(page) -> dict:
    """gpu_id → the card's connections text, e.g. {0: "2 / 4", ...}."""
    counts = {}
    for card in await page.get_by_test_id("gpu-card").all():
        counts[int(await card.get_attribute("data-gpu-id"))] = await card.get_by_test_id("connections").inner_text()
    return counts


@pytest.mark.browser
def test_dashboard_shows_each_gpus_connections_and_follows_them_down_to_zero(tmp_path):
    async_playwright = _async_playwright()

    async def scenario(server):
        held = await _hold_connections(server.ws_url, 5)
        per_gpu = Counter(config["gpu_id"] for _, config in held)
        assert sorted(per_gpu.values()) == [1, 1, 1, 2], per_gpu  # least-loaded over 4 GPUs
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.set_viewport_size({"width": 1200, "height": 720})
            await page.goto(server.base_url + "/dashboard")

            expected = {gpu_id: f"{per_gpu.get(gpu_id, 0)} / 4" for gpu_id in range(4)}
            async def shows_five():
                return await page.get_by_test_id("total-connections").inner_text() == "5" and await _card_counts(page) == expected
            assert await _wait_for(shows_five, timeout_s=10), await _card_counts(page)
            assert await page.get_by_test_id("total-gpus").inner_text() == "4"
            assert await page.get_by_test_id("healthy-gpus").inner_text() == "4"
            assert await page.get_by_test_id("queued").inner_text() == "0"
            cards = page.get_by_test_id("gpu-card")
            assert await cards.count() == 4
            assert "simulated" in (await cards.first.inner_text()).lower()
            assert await page.get_by_test_id("cpu-card").count() == 0
            await _screenshot(page, tmp_path, "dashboard.png")

            for ws, _ in held:
                await ws.close()
            async def shows_zero():
                return await page.get_by_test_id("total-connections").inner_text() == "0" and \
                    set((await _card_counts(page)).values()) == {"0 / 4"}
            assert await _wait_for(shows_zero, timeout_s=7), await _card_counts(page)  # within a few 2 s polls

            assert await _fits_phone_width(page), "the dashboard overflows a phone-width screen"
            await browser.close()

    with running_server("--simulate-gpus", "4", "--max-connections-per-gpu", "4", "--min-audio-rate", "0") as server:
        run(scenario(server))


@pytest.mark.browser
def test_live_page_shows_its_queue_position_then_the_refusal_when_no_gpu_frees_up(tmp_path):
    async_playwright = _async_playwright()

    async def scenario(server):
        held = await _hold_connections(server.ws_url, 1)  # the only GPU slot
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=HARVARD_WAV if HARVARD_WAV.exists() else None)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            await page.get_by_test_id("record-button").click()
            status = page.get_by_test_id("status")
            await page.locator('[data-testid="status"][data-state="queued"]').wait_for(timeout=10_000)
            assert "position 1" in await status.inner_text()
            await page.locator('[data-testid="status"][data-state="error"]').wait_for(timeout=15_000)
            error = page.get_by_test_id("error")
            assert await error.is_visible()
            assert "No GPU available" in await error.inner_text()
            assert await page.get_by_test_id("record-button").inner_text() == "Record"  # no retry loop on a refusal
            await _screenshot(page, tmp_path, "refused.png", save_to_docs=False)
            await browser.close()
        for ws, _ in held:
            await ws.close()

    flags = ("--simulate-gpus", "1", "--max-connections-per-gpu", "1", "--no-cpu-fallback", "--queue-timeout", "3",
             "--min-audio-rate", "0")  # the holder sends no audio
    with running_server(*flags) as server:
        run(scenario(server))


@pytest.mark.browser
def test_live_page_reconnects_while_recording_when_the_server_comes_back(tmp_path):
    async_playwright = _async_playwright()
    if not HARVARD_WAV.exists():
        pytest.skip(f"{HARVARD_WAV} is missing: apt-get install -y codec2-examples")

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=HARVARD_WAV)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            await page.get_by_test_id("record-button").click()
            recording = page.locator('[data-testid="status"][data-state="recording"]')
            await recording.wait_for(timeout=30_000)
            await page.get_by_test_id("line").first.wait_for(timeout=30_000)

            # SIGTERM drains: the first session keeps transcribing until the server lets go, so what the
            # page must keep is the transcript as it stood when the connection dropped.
            await asyncio.to_thread(server.stop)
            await page.locator('[data-testid="status"][data-state="reconnecting"]').wait_for(timeout=10_000)
            assert "Reconnecting" in await page.get_by_test_id("status").inner_text()
            first_line = await page.get_by_test_id("line").first.inner_text()
            assert "birch" in first_line.lower()
            await asyncio.to_thread(server.start)
            await recording.wait_for(timeout=60_000)  # back-off 1, 2, 4, 8 s ... while the server restarts
            assert await page.get_by_test_id("line").first.inner_text() == first_line, "the earlier transcript was lost"

            await page.get_by_test_id("record-button").click()
            await page.locator('[data-testid="status"][data-state="finished"]').wait_for(timeout=60_000)
            assert (await page.evaluate("window.wlkDebug.received")).count("config") >= 2
            await browser.close()

    with running_server() as server:
        run(scenario(server))
