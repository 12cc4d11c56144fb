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
    assert "wlkDebug" not in client.get("/static/app.js").text  # no debug hook shipped
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
            errors = _collect_console_errors(page)
            await page.goto(server.base_url + "/")
            assert await page.get_by_test_id("ws-url").input_value() == server.ws_url + "?mode=diff"
            await page.get_by_test_id("record-button").click()

            # "smooth planks", not "birch canoe": through Chromium's Opus, tiny.en has heard the clip's first words as
            # "birch cano" and, in a fresh-clone run, "The Bitch cano" at every loop; the page's work is the same
            async def heard_smooth_planks():
                return "smooth planks" in _normalised(await page.get_by_test_id("lines").inner_text()
                                                      + " " + await page.get_by_test_id("buffer").inner_text())
            heard = await _wait_for(heard_smooth_planks, timeout_s=60)
            status = await page.get_by_test_id("status").inner_text()
            assert heard, f"no 'smooth planks' after 60 s; status {status!r}; page:\n{await page.inner_text('body')}"
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
            status = page.get_by_test_id("status")  # one accepted connection, ready_to_stop its last message
            assert await status.get_attribute("data-sessions") == "1"
            assert await status.get_attribute("data-last-message") == "ready_to_stop"
            assert await page.get_by_test_id("error").is_hidden()
            await _check_words_and_language(page)
            assert not errors, errors
            await _screenshot(page, tmp_path, "live.png", save_to_docs=False)  # docs: the level meter test
            async with page.expect_download() as download_info:
                await page.get_by_test_id("download-button").click()
            download = await download_info.value
            assert download.suggested_filename.endswith(".txt")
            saved = tmp_path / download.suggested_filename
            await download.save_as(str(saved))
            assert "smooth planks" in saved.read_text().lower() and "Speaker" in saved.read_text()  # "canoe" comes out "cano" or "can now" too
            await browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
            await page.get_by_test_id("copy-button").click()
            assert await page.evaluate("navigator.clipboard.readText()") == saved.read_text()

            assert await _fits_phone_width(page), "the live page overflows a phone-width screen"
            await _screenshot(page, tmp_path, "live-phone.png", save_to_docs=False)
            await browser.close()

    with running_server(*flags) as server:
        run(scenario(server))


async def _check_words_and_language(page) -> None:
    """The transcript, rebuilt from `?mode=diff` messages, as words: Whisper's leading spaces make single
    spaces between them (none glued, none doubled); unsure words are lighter; the language is named."""
    words = await page.locator('[data-testid="line"] .word').evaluate_all("""(spans) => spans.map((span) => ({
        text: span.textContent, probability: Number(span.dataset.probability), unsure: span.classList.contains("unsure"),
        first: span === span.parentElement.firstElementChild }))""")
    assert len(words) >= 10, words
    assert all(w["unsure"] == (w["probability"] < 0.5) for w in words), words
    assert len({w["probability"] for w in words}) >= 3, "probabilities look constant, not Whisper's"
    def glued_or_doubled(w: dict) -> bool:  # a word not the line's first starts with a space, or is punctuation
        starts_word = bool(re.match(r"\w", w["text"]))
        return (w["first"] and w["text"] != w["text"].lstrip()) or (not w["first"] and starts_word) or "  " in w["text"]
    odd = [w for w in words if glued_or_doubled(w)]
    assert not odd, odd
    for text in await page.locator('[data-testid="line"] .text').all_text_contents():
        assert text == text.strip() and "  " not in text, repr(text)
    lighter = await page.evaluate("""() => {  // the page's own stylesheet, on a word of each kind
        const line = document.createElement("li"), text = document.createElement("p");
        line.className = "line"; text.className = "text";
        text.innerHTML = '<span class="word">sure</span><span class="word unsure">unsure</span>';
        line.append(text); document.getElementById("lines").append(line);
        const [sure, unsure] = [...text.children].map((span) => getComputedStyle(span).color);
        line.remove();
        return sure !== unsure;
    }""")
    assert lighter, "unsure words are not shown differently"
    assert await page.get_by_test_id("language").inner_text() == "en (detected)"
    assert await page.locator('[data-testid="line"][data-language="en"]').count() >= 1


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
            await _screenshot(page, tmp_path, "dashboard.png", save_to_docs=False)  # docs: the charts test

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
            # a line is now at most one sentence past 10 s: the clip's first words, which tiny.en may mishear
            assert any(word in first_line.lower() for word in ("birch", "canoe", "planks", "glue")), first_line
            await asyncio.to_thread(server.start)
            await recording.wait_for(timeout=60_000)  # back-off 1, 2, 4, 8 s ... while the server restarts
            assert await page.get_by_test_id("line").first.inner_text() == first_line, "the earlier transcript was lost"

            await page.get_by_test_id("record-button").click()
            await page.locator('[data-testid="status"][data-state="finished"]').wait_for(timeout=60_000)
            assert int(await page.get_by_test_id("status").get_attribute("data-sessions")) >= 2
            await browser.close()

    with running_server() as server:
        run(scenario(server))


@pytest.mark.browser
def test_live_page_refused_for_its_origin_says_why_and_does_not_reconnect(tmp_path):
    """4403 is final: one attempt, the reason on the page, no reconnect loop hammering the server."""
    async_playwright = _async_playwright()

    def refused_for_origin(server) -> float:
        metrics = server.get("/metrics").text
        found = re.search(r'^whisperlivekit_connections_refused_total\{reason="origin"\} ([0-9.]+)$', metrics, re.M)
        return float(found.group(1)) if found else 0.0

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=HARVARD_WAV if HARVARD_WAV.exists() else None)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(server.base_url + "/")
            await page.get_by_test_id("record-button").click()
            await page.locator('[data-testid="status"][data-state="error"]').wait_for(timeout=15_000)
            error = page.get_by_test_id("error")
            assert await error.is_visible()
            assert "Origin not allowed" in await error.inner_text()
            await asyncio.sleep(20)  # long enough for several reconnects (back-off 1, 2, 4, 8 s)
            assert await page.get_by_test_id("status").get_attribute("data-state") == "error"
            assert await page.get_by_test_id("record-button").inner_text() == "Record"
            await _screenshot(page, tmp_path, "refused-origin.png", save_to_docs=False)
            await browser.close()

    with running_server("--allowed-origins", "http://elsewhere.example") as server:
        run(scenario(server))
        assert refused_for_origin(server) == 1.0, "the page must make exactly one connection attempt"


# --- history charts and the level meter ----------------------------------------------


def _collect_console_errors(page) -> list:
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


async def _chart_story(box) -> dict:
    """What a chart element says it shows: points, first, peak and latest value."""
    story = {name: await box.get_attribute(f"data-{name}") for name in ("points", "first", "peak", "latest")}
    return {name: float(value) if value else None for name, value in story.items()}


async def _painted_pixels(box) -> int:
    """Painted pixels of a chart's canvas between its top and bottom grid lines, right of its y labels:
    a flat zero curve paints none there, a curve that rose does (its line and its filled area)."""
    return await box.evaluate("""(box) => {
        const canvas = box.querySelector("canvas"), width = canvas.width, height = canvas.height;
        const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
        let painted = 0;
        for (let y = Math.round(height * 0.3); y < Math.round(height * 0.8); y++)
            for (let x = Math.round(40 * devicePixelRatio); x < width; x++) if (pixels[(y * width + x) * 4 + 3] > 0) painted += 1;
        return painted;
    }""")


async def _speak(ws_url: str, pcm: bytes, stop: asyncio.Event, opened: asyncio.Future) -> None:
    """One client that talks: the clip in 100 ms PCM frames at real time, looped until `stop`."""
    import websockets

    frame = 3200  # 100 ms of 16 kHz s16le
    async with websockets.connect(ws_url, open_timeout=30, max_size=None) as ws:
        config = json.loads(await asyncio.wait_for(ws.recv(), 30))
        opened.set_result(config)
        async def drain():
            async for _ in ws:
                pass
        reader = asyncio.create_task(drain())
        offset = 0
        while not stop.is_set():
            await ws.send(pcm[offset:offset + frame])
            offset = (offset + frame) % (len(pcm) - frame)
            await asyncio.sleep(0.1)
        reader.cancel()


@pytest.mark.browser
def test_dashboard_charts_rise_and_fall_with_five_clients_on_four_gpus(tmp_path):
    """Four idle clients and one that talks: connections rise and fall on every chart, the talker's
    GPU alone gets a commit-lag curve, and the page logs no error."""
    async_playwright = _async_playwright()
    if not HARVARD_WAV.exists():
        pytest.skip(f"{HARVARD_WAV} is missing: apt-get install -y codec2-examples")
    from whisperlivekit.client import load_pcm16

    speech = load_pcm16(HARVARD_WAV)

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors = _collect_console_errors(page)
            await page.set_viewport_size({"width": 1200, "height": 720})
            await page.goto(server.base_url + "/dashboard")
            host = page.get_by_test_id("host-chart")
            chart = lambda gpu_id, metric="connections": page.locator(  # noqa: E731
                f'[data-gpu-id="{gpu_id}"] [data-testid="chart"][data-metric="{metric}"]')

            async def has_points(minimum):
                return ((await _chart_story(host))["points"] or 0) >= minimum
            assert await _wait_for(lambda: has_points(1), timeout_s=10), "the host chart got no sample"
            idle_pixels = {gpu_id: await _painted_pixels(chart(gpu_id)) for gpu_id in range(4)}
            assert set(idle_pixels.values()) == {0}, idle_pixels  # flat at zero

            stop_talking, talker_config = asyncio.Event(), asyncio.get_running_loop().create_future()
            talker = asyncio.create_task(_speak(server.ws_url, speech, stop_talking, talker_config))
            talker_gpu = (await asyncio.wait_for(talker_config, 30))["gpu_id"]
            held = await _hold_connections(server.ws_url, 4)
            per_gpu = Counter([talker_gpu] + [config["gpu_id"] for _, config in held])
            async def talker_lag_charted():
                return ((await _chart_story(chart(talker_gpu, "commit_lag")))["points"] or 0) >= 1
            assert await _wait_for(talker_lag_charted, timeout_s=45), "no commit lag charted for the talking client's GPU"
            assert await _wait_for(lambda: has_points(5), timeout_s=20), await _chart_story(host)
            for ws, _ in held[:3]:
                await ws.close()
            async def down_to_two():
                return (await _chart_story(host))["latest"] == 2
            assert await _wait_for(down_to_two, timeout_s=10), await _chart_story(host)
            await asyncio.sleep(4)
            await _screenshot(page, tmp_path, "dashboard.png")

            stop_talking.set()
            await talker
            await held[3][0].close()
            async def down_to_zero():
                return (await _chart_story(host))["latest"] == 0
            assert await _wait_for(down_to_zero, timeout_s=10), await _chart_story(host)

            story = await _chart_story(host)
            assert (story["first"], story["peak"], story["latest"]) == (0, 5, 0), story
            for gpu_id in range(4):
                story = await _chart_story(chart(gpu_id))
                assert (story["first"], story["peak"], story["latest"]) == (0, per_gpu.get(gpu_id, 0), 0), (gpu_id, story)
                if per_gpu.get(gpu_id):  # the curve that rose was drawn: its filled area paints the canvas
                    assert await _painted_pixels(chart(gpu_id)) > idle_pixels[gpu_id] + 20, gpu_id
                assert "peak" in await chart(gpu_id).get_attribute("aria-label")
                lag = await _chart_story(chart(gpu_id, "commit_lag"))
                assert (lag["points"] > 0) == (gpu_id == talker_gpu), (gpu_id, talker_gpu, lag)
            assert (await _chart_story(chart(talker_gpu, "realtime_load")))["peak"] > 0  # its engine ran on the CPU
            assert await page.locator('[data-testid="chart"][data-metric="memory"]').count() == 4
            await page.set_viewport_size({"width": 390, "height": 844})
            await asyncio.sleep(0.5)  # the charts follow their containers' width on the next frame
            assert await _fits_phone_width(page), "the dashboard with charts overflows a phone-width screen"
            assert not errors, errors
            await browser.close()

    with running_server("--simulate-gpus", "4", "--max-connections-per-gpu", "4", "--pcm-input") as server:
        run(scenario(server))


def _speech_then_silence(tmp_path: Path, silence_s: float = 4.0) -> Path:
    """The Harvard clip followed by digital silence: Chromium loops it as the microphone."""
    import wave

    with wave.open(str(HARVARD_WAV)) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    path = tmp_path / "speech-then-silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + b"\0" * int(silence_s * params.framerate) * params.sampwidth * params.nchannels)
    return path


def _longest_run(values, predicate) -> int:
    longest = current = 0
    for value in values:
        current = current + 1 if predicate(value) else 0
        longest = max(longest, current)
    return longest


@pytest.mark.browser
@pytest.mark.parametrize("flags", [(), ("--pcm-input",)], ids=["webm", "pcm"])
def test_level_meter_moves_during_speech_rests_in_silence_and_the_clock_runs(tmp_path, flags):
    async_playwright = _async_playwright()
    if not HARVARD_WAV.exists():
        pytest.skip(f"{HARVARD_WAV} is missing: apt-get install -y codec2-examples")
    microphone = _speech_then_silence(tmp_path)  # 10.8 s of speech, 4 s of silence, looped

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=microphone)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            errors = _collect_console_errors(page)
            await page.goto(server.base_url + "/")
            meter = page.get_by_test_id("level-meter")
            assert not await meter.is_visible(), "no meter before recording"
            await page.get_by_test_id("record-button").click()
            await page.locator('[data-testid="status"][data-state="recording"]').wait_for(timeout=30_000)
            assert await meter.is_visible()
            first_clock = await page.get_by_test_id("elapsed").inner_text()

            # the meter's value every 50 ms for one loop of the clip and a bit (15.5 s)
            levels = await page.evaluate("""() => new Promise((resolve) => {
                const meter = document.querySelector('[data-testid="level-meter"]'), values = [];
                const timer = setInterval(() => {
                    values.push(Number(meter.getAttribute("aria-valuenow")));
                    if (values.length >= 330) { clearInterval(timer); resolve(values); }
                }, 50);
            })""")
            speaking = [v for v in levels if v > 10]
            assert max(levels) >= 40, f"the meter never rose with speech: max {max(levels)}"
            assert len(set(speaking)) >= 15, f"the meter did not move with the speech: {sorted(set(speaking))}"
            assert _longest_run(levels, lambda v: v <= 2) >= 40, "the meter did not rest for 2 s in the 4 s of silence"
            # Over 16.5 s the fake microphone plays about 11 s of speech. With both cores busy, Chromium's fake
            # capture once dropped frames mid-clip: the longest unbroken run was 59 samples, one sentence
            # (3 s). So require a sentence unbroken, and most of the speech time above rest.
            assert _longest_run(levels, lambda v: v > 2) >= 50, "the meter dropped out within a sentence"
            assert sum(1 for v in levels if v > 2) >= 150, "the meter was at rest for most of 10 s of speech"

            clock = await page.get_by_test_id("elapsed").inner_text()
            assert re.fullmatch(r"\d+:\d\d", clock) and clock > first_clock, (first_clock, clock)
            minutes, seconds = map(int, clock.split(":"))
            assert 15 <= minutes * 60 + seconds <= 60, clock

            async def loud_with_text():  # for the screenshot: words on the page and the meter up
                text = await page.get_by_test_id("lines").inner_text()
                return "birch" in text.lower() and int(await meter.get_attribute("aria-valuenow")) > 40
            await _wait_for(loud_with_text, timeout_s=40, interval_s=0.1)
            await _screenshot(page, tmp_path, "live.png", save_to_docs=not flags)

            await page.get_by_test_id("record-button").click()
            await page.locator('[data-testid="status"][data-state="finished"]').wait_for(timeout=60_000)
            stopped_clock = await page.get_by_test_id("elapsed").inner_text()
            await asyncio.sleep(1.5)
            assert await page.get_by_test_id("elapsed").inner_text() == stopped_clock, "the clock runs on after Stop"
            assert await meter.get_attribute("aria-valuenow") == "0"
            assert not errors, errors
            await browser.close()

    with running_server(*flags) as server:
        run(scenario(server))


@pytest.mark.browser
def test_dashboard_charts_start_empty_again_after_a_server_restart(tmp_path):
    async_playwright = _async_playwright()

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            page_errors = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))  # network errors while down are expected
            await page.goto(server.base_url + "/dashboard")
            host = page.get_by_test_id("host-chart")

            async def points():
                return (await _chart_story(host))["points"] or 0
            async def at_least_five():
                return await points() >= 5
            assert await _wait_for(at_least_five, timeout_s=20)
            before = await points()

            await asyncio.to_thread(server.stop)
            await page.get_by_test_id("error").wait_for(state="visible", timeout=10_000)
            await asyncio.to_thread(server.start)
            await page.get_by_test_id("error").wait_for(state="hidden", timeout=10_000)
            async def drawn_again():
                return await points() >= 1
            assert await _wait_for(drawn_again, timeout_s=10)
            after = await points()
            served = len((await asyncio.to_thread(server.get, "/gpu-status/history")).json()["samples"])
            assert after < before and after <= served, (before, after, served)  # the old curve is gone
            assert await page.get_by_test_id("gpu-card").count() == 2
            assert not page_errors, page_errors
            await browser.close()

    with running_server("--simulate-gpus", "2", "--no-preload") as server:
        run(scenario(server))


def test_uplot_is_vendored_with_its_licence_and_shipped_in_the_package():
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    client = TestClient(create_app(Settings(preload=False)))
    page = client.get("/dashboard").text
    for name, kind in (("uPlot.iife.min.js", "javascript"), ("uPlot.min.css", "text/css")):
        assert f'static/vendor/uplot/{name}' in page
        response = client.get(f"/static/vendor/uplot/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
    assert "MIT License" in client.get("/static/vendor/uplot/LICENSE").text
    for name in ("dashboard-charts.js", "meter.js"):
        assert "javascript" in client.get(f"/static/{name}").headers["content-type"], name
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["whisperlivekit"]
    web = root / "whisperlivekit"
    for path in (web / "web" / "vendor" / "uplot").iterdir():
        relative = str(path.relative_to(web))
        assert any(fnmatch.fnmatch(relative, pattern) and "/" not in relative[len(pattern.rstrip("*")):] for pattern in patterns), relative


# --- WhisperLiveKit's own page, unchanged, against this server ----------------------------------


def _tokens(text: str) -> list:
    return [token for token in text.lower().replace("'", "").split() if token]


def _glued(token: str, known: set) -> bool:
    """A token two words were glued into: "planks.glue", or "canoeslid" (not a word, but two of them)."""
    if re.search(r"[a-z0-9][.,!?;:][a-z]", token):
        return True
    bare = re.sub(r"[^a-z0-9]", "", token)
    if not bare or bare in known:
        return False
    return any(bare[:i] in known and bare[i:] in known for i in range(1, len(bare)))


@pytest.mark.browser
def test_whisperlivekits_own_page_shows_no_glued_words_and_the_whole_final_text(tmp_path):
    """WhisperLiveKit 0.2.26's page from its PyPI wheel, served as it is by a static file server on
    another port, pointed at this server through its own "Websocket URL" setting. While the Harvard
    clip plays as the microphone, no rendered text glues two words (its page joins `lines[].text` and
    `buffer_transcription` with no separator); after Stop it shows everything the server sent last."""
    import functools
    import http.server
    import threading

    import audio_assets
    from conftest import free_port

    async_playwright = _async_playwright()
    if not HARVARD_WAV.exists():
        pytest.skip(f"{HARVARD_WAV} is missing: apt-get install -y codec2-examples")
    try:
        root = audio_assets.whisperlivekit_page()
    except audio_assets.AssetUnavailable as exc:
        pytest.skip(str(exc))
    reference = " ".join(sentence for sentence, *_ in audio_assets.HARVARD_SENTENCES)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    page_url = f"http://127.0.0.1:{static.server_address[1]}/web/live_transcription.html"

    async def scenario(server):
        async with async_playwright() as playwright:
            browser = await _launch(playwright, tmp_path, fake_audio=HARVARD_WAV)
            page = browser.pages[0] if browser.pages else await browser.new_page()
            received = []  # what the server sent, seen on the wire (the page is not touched)
            page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(json.loads(frame))))
            await page.goto(page_url)
            await page.locator("#settingsToggle").click()
            await page.locator("#websocketInput").fill(server.ws_url)
            await page.locator("#websocketInput").press("Tab")  # its `change` handler takes the URL
            assert "updated" in (await page.locator("#status").inner_text()).lower()
            await page.locator("#recordButton").click()

            rendered = []
            async def sample_until_the_clip_played():
                texts = await page.locator("#linesTranscript .textcontent").all_text_contents()
                rendered.extend(texts)
                return "steady work" in _normalised(" ".join(texts))
            assert await _wait_for(sample_until_the_clip_played, timeout_s=90, interval_s=0.2), \
                f"the clip's end never showed; last: {rendered[-3:]}"
            await page.locator("#recordButton").click()
            finished = page.locator("#status", has_text="Finished processing audio")
            await finished.wait_for(timeout=60_000)
            final_page = " ".join(await page.locator("#linesTranscript .textcontent").all_text_contents())
            await _screenshot(page, tmp_path, "whisperlivekit-page.png", save_to_docs=False)
            await browser.close()

        updates = [m for m in received if "lines" in m]
        assert received[0]["type"] == "config" and received[-1] == {"type": "ready_to_stop"} and updates
        last = updates[-1]
        server_text = "".join(line["text"] for line in last["lines"]) + last["buffer_transcription"]
        known = {re.sub(r"[^a-z0-9]", "", token) for token in _tokens(reference + " " + server_text)}
        glued = sorted({token for text in rendered for token in _tokens(text) if _glued(token, known)})
        assert not glued, f"glued words on WhisperLiveKit's page: {glued}"
        assert _normalised(final_page) == _normalised(server_text), (final_page, server_text)
        # the server's accuracy is tested elsewhere; here only that the clip went through
        assert "smooth planks" in _normalised(server_text) and "steady work" in _normalised(server_text), server_text

    try:
        with running_server() as server:
            run(scenario(server))
    finally:
        static.shutdown()
