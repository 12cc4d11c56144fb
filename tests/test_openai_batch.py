"""OpenAI's batch API, `POST /v1/audio/transcriptions` and `GET /v1/models`, driven by the official
`openai` SDK (unmodified, `base_url` pointed here) against a real server with real tiny.en."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import openai
import pytest

from conftest import run, running_server, wer
from helpers import check_finished_stream, open_session
from whisperlivekit.api.errors import openai_error
from whisperlivekit.asr.types import FileSegment, FileTranscribeRequest, FileTranscription, TranscribeResult
from whisperlivekit.client import encode_webm_opus, pcm_to_float, stream
from whisperlivekit.errors import NotSupported
from whisperlivekit.runtime.device_worker import DeviceWorker

pytestmark = pytest.mark.slow  # the adapter suites: every test here uploads to a real server through the SDK (CI runs them; the fast tier does not)

TOKEN = "openai-batch-test-token"
MAX_FILE_BYTES = 2_000_000
CLIPS = ["harvard", "arctic_a0007", "arctic_a0009"]


@pytest.fixture(scope="module")
def server():
    with running_server("--model", "tiny.en", "--device", "cpu", "--api-token", TOKEN, "--max-cpu-connections", "2",
                        "--max-file-bytes", str(MAX_FILE_BYTES), "--pcm-input") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=TOKEN, base_url=server.base_url + "/v1", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def clip_file():
    """name → (WAV file path, reference text)."""
    import audio_assets

    def get(name: str):
        return audio_assets.harvard() if name == "harvard" else audio_assets.arctic(name)

    return get


@pytest.fixture(scope="module")
def offline():
    """The same model, whole recording in one `WhisperModel.transcribe` (the WER baseline)."""
    from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
    from whisperlivekit.weights.resolve import resolve_model

    backend = FasterWhisperBackend(resolve_model("tiny.en"), device="cpu")
    yield backend
    backend.close()


def _transcribe(client, path, **kwargs):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


# -- accuracy ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_file_wer_equals_offline_transcription_within_one_point(client, clip_file, speech_pcm, offline, clip):
    path, reference = clip_file(clip)
    result = _transcribe(client, path)
    baseline = offline.transcribe_offline(pcm_to_float(speech_pcm(clip)[0]), language="en")
    served, expected = wer(reference, result.text), wer(reference, baseline)
    print(f"{clip}: file WER {served:.1%}, offline WER {expected:.1%}")
    assert abs(served - expected) <= 0.01, f"{result.text!r} vs offline {baseline!r}"
    assert served <= max(0.10, expected + 0.01)  # a0009: tiny.en hears "Greggs in" for "Gregson" offline too


# -- every response format ---------------------------------------------------------------


def test_json_response_carries_the_text_and_the_audio_duration(client, clip_file):
    path, reference = clip_file("harvard")
    result = _transcribe(client, path, response_format="json")
    assert wer(reference, result.text) <= 0.10
    assert result.usage.type == "duration" and result.usage.seconds == 11  # 10.8 s, rounded up


def test_text_response_is_the_plain_transcript(client, clip_file):
    path, reference = clip_file("arctic_a0007")
    text = _transcribe(client, path, response_format="text")
    assert isinstance(text, str) and not text.lstrip().startswith("{")
    assert wer(reference, text) <= 0.10


def test_srt_response_has_numbered_cues_with_comma_timestamps(client, clip_file):
    path, reference = clip_file("harvard")
    srt = _transcribe(client, path, response_format="srt")
    cues = [c for c in srt.strip().split("\n\n") if c]
    assert len(cues) >= 2
    ends = []
    for number, cue in enumerate(cues, 1):
        index, timing, *text = cue.split("\n")
        assert index == str(number)
        match = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", timing)
        assert match, timing
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000
        assert start < end <= 10.9 and (not ends or start >= ends[-1] - 0.01)
        ends.append(end)
        assert text and text[0].strip()
    assert wer(reference, " ".join(c.split("\n", 2)[2] for c in cues)) <= 0.10


def test_vtt_response_starts_with_webvtt_and_uses_dot_timestamps(client, clip_file):
    path, reference = clip_file("harvard")
    vtt = _transcribe(client, path, response_format="vtt")
    header, *cues = vtt.strip().split("\n\n")
    assert header == "WEBVTT"
    assert len(cues) >= 2
    for cue in cues:
        timing, text = cue.split("\n", 1)
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", timing), timing
    assert wer(reference, " ".join(c.split("\n", 1)[1] for c in cues)) <= 0.10


def test_verbose_json_has_segments_language_and_duration_but_no_words_by_default(client, clip_file):
    path, reference = clip_file("harvard")
    result = _transcribe(client, path, response_format="verbose_json")
    assert result.language == "en" and result.duration == pytest.approx(10.8, abs=0.05)
    assert result.words is None
    assert len(result.segments) >= 2
    assert "".join(s.text for s in result.segments).strip() == result.text
    for segment in result.segments:
        assert 0 <= segment.start < segment.end <= 10.9
        assert segment.tokens and segment.avg_logprob < 0 and 0 <= segment.no_speech_prob <= 1
    assert wer(reference, result.text) <= 0.10


def test_word_granularity_gives_timed_words_with_probabilities(client, clip_file):
    path, reference = clip_file("harvard")
    result = _transcribe(client, path, response_format="verbose_json", timestamp_granularities=["word"])
    words = result.words
    assert words and wer(reference, " ".join(w.word for w in words)) <= 0.10
    assert result.segments is None  # only what was asked for, as OpenAI does
    for previous, word in zip(words, words[1:]):
        assert word.start >= previous.start
    assert all(0 <= w.start <= w.end <= 10.9 for w in words)
    probabilities = [w.model_extra["probability"] for w in words]
    assert all(0 < p <= 1 for p in probabilities) and len(set(probabilities)) > 1  # Whisper's, not a constant
    # "birch" is said in the first sentence (0.05-2.55 s), "background" in the second (2.70-5.60 s)
    birch = next(w for w in words if "birch" in w.word.lower())
    background = next(w for w in words if "background" in w.word.lower())
    assert birch.end <= 2.8 and 2.6 <= background.start <= 5.7


def test_both_granularities_give_segments_and_words(client, clip_file):
    path, _ = clip_file("arctic_a0007")
    result = _transcribe(client, path, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert result.segments and result.words


def test_stream_sends_text_deltas_then_done(client, clip_file):
    path, reference = clip_file("harvard")
    with open(path, "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and types.count("transcript.text.done") == 1
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2  # one per decoded segment, as they are decoded
    assert "".join(deltas).strip() == events[-1].text
    assert wer(reference, events[-1].text) <= 0.10


def test_prompt_and_language_are_accepted(client, clip_file):
    path, reference = clip_file("arctic_a0009")
    result = _transcribe(client, path, language="en", prompt="Gregson.", temperature=0.0)
    assert wer(reference, result.text) <= 0.10


def test_a_webm_opus_upload_is_decoded(client, speech_pcm):
    pcm, reference = speech_pcm("arctic_a0007")
    result = client.audio.transcriptions.create(model="whisper-1", file=("clip.webm", encode_webm_opus(pcm)))
    assert wer(reference, result.text) <= 0.15


def test_models_lists_the_servers_model(client):
    assert [m.id for m in client.models.list()] == ["tiny.en"]
    assert client.models.retrieve("tiny.en").owned_by == "whisperlivekit"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("whisper-1")
    assert caught.value.body["code"] == "model_not_found"


# -- errors, in OpenAI's shape -----------------------------------------------------------


def _assert_openai_error(body: dict, error_type: str) -> None:
    assert set(body) >= {"message", "type", "param", "code"}, body  # the SDK unwraps {"error": {...}}
    assert body["type"] == error_type and body["message"]


def test_a_corrupt_file_gets_a_clear_400(client, server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", b"RIFF" + b"\x13\x37" * 3000))
    assert caught.value.status_code == 400
    _assert_openai_error(caught.value.body, "invalid_request_error")
    assert caught.value.body["param"] == "file" and "decode" in caught.value.body["message"].lower()
    assert "/tmp/" not in caught.value.body["message"]  # the server's temporary path is not shown


def test_a_wrong_token_gets_401(server, clip_file):
    path, _ = clip_file("arctic_a0009")
    intruder = openai.OpenAI(api_key="not-the-token", base_url=server.base_url + "/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        _transcribe(intruder, path)
    assert caught.value.status_code == 401
    _assert_openai_error(caught.value.body, "invalid_request_error")
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        intruder.models.list()


def test_a_file_over_the_limit_gets_413(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\0" * (MAX_FILE_BYTES + 100_000)))
    assert caught.value.status_code == 413
    _assert_openai_error(caught.value.body, "invalid_request_error")
    assert str(MAX_FILE_BYTES) in caught.value.body["message"]


def test_an_unsupported_language_is_a_400_naming_the_parameter(client, clip_file):
    path, _ = clip_file("arctic_a0009")
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(client, path, language="fr")
    assert caught.value.body["param"] == "language" and "English-only" in caught.value.body["message"]


def test_diarized_json_without_diarization_says_what_to_run(client, clip_file):
    path, _ = clip_file("arctic_a0009")
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(client, path, response_format="diarized_json")
    assert "--diarization" in caught.value.body["message"] and caught.value.body["param"] == "response_format"


@pytest.mark.slow
def test_diarized_json_gives_each_sentence_its_speaker(clip_file):
    import audio_assets

    path, reference = clip_file("harvard")  # man, woman, man, woman
    with running_server("--model", "tiny.en", "--device", "cpu", "--diarization") as diarizing:
        client = openai.OpenAI(api_key="unused", base_url=diarizing.base_url + "/v1", max_retries=0, timeout=300)
        result = _transcribe(client, path, response_format="diarized_json")
    assert wer(reference, result.text) <= 0.10
    assert [s.speaker for s in result.segments] == ["A", "B", "A", "B"], result.segments
    for segment, (sentence, _, start_s, end_s) in zip(result.segments, audio_assets.HARVARD_SENTENCES):
        assert segment.type == "transcript.text.segment"
        assert wer(sentence, segment.text) <= 0.15, (sentence, segment.text)
        assert abs(segment.start - start_s) <= 0.5 and abs(segment.end - end_s) <= 0.5


def test_bad_uploads_get_400s_and_leave_no_slot_or_ffmpeg_behind(server):
    import httpx

    from helpers import eventually, ffmpeg_children

    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = server.base_url + "/v1/audio/transcriptions"
    rng = np.random.default_rng(7)
    bad_files = [b"", rng.bytes(5000), b"RIFF\x24\x00\x00\x00WAVEfmt ", b"\x1aE\xdf\xa3" + rng.bytes(3000),
                 b"ID3\x03\x00" + rng.bytes(2000), b"OggS" + rng.bytes(800)]
    for payload in bad_files:
        response = httpx.post(url, headers=auth, files={"file": ("upload.bin", payload)}, data={"model": "whisper-1"}, timeout=60)
        assert response.status_code == 400, (payload[:8], response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    for kwargs in ({"json": {"model": "whisper-1"}}, {"data": {"model": "whisper-1"}},
                   {"content": b"--x\r\nnot a form", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}):
        headers = {**auth, **kwargs.pop("headers", {})}
        response = httpx.post(url, headers=headers, timeout=60, **kwargs)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "file"
    assert eventually(lambda: server.get("/health").json()["active_connections"] == 0)
    assert eventually(lambda: ffmpeg_children(server.proc.pid) == [])


def test_a_full_server_answers_503_with_retry_after(server, client, clip_file):
    path, _ = clip_file("arctic_a0009")

    async def scenario():
        held = [await open_session(f"{server.ws_url}?token={TOKEN}") for _ in range(2)]  # both CPU slots
        try:
            assert all(first and first["type"] == "config" for _, first, _ in held)
            with pytest.raises(openai.InternalServerError) as caught:
                await asyncio.to_thread(_transcribe, client, path)
            return caught.value
        finally:
            for ws, _, _ in held:
                await ws.close()

    refusal = run(scenario())
    assert refusal.status_code == 503
    assert int(refusal.response.headers["retry-after"]) >= 1
    _assert_openai_error(refusal.body, "server_error")
    # the slots came back: the same request now succeeds
    deadline = time.monotonic() + 15
    while True:
        try:
            assert _transcribe(client, path).text
            break
        except openai.InternalServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
def test_a_client_that_gives_up_on_a_long_file_frees_its_slot(server, speech_pcm):
    import httpx

    from helpers import eventually

    long_file = encode_webm_opus(_long_recording(speech_pcm)[0])
    before = server.log().count("client left")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {TOKEN}"},
                   files={"file": ("long.webm", long_file)}, data={"model": "whisper-1"}, timeout=httpx.Timeout(60, read=1.0))
    assert eventually(lambda: server.log().count("client left") > before, timeout=60), "the transcription was not stopped"
    assert eventually(lambda: server.get("/health").json()["active_connections"] == 0, timeout=60)


def _long_recording(speech_pcm, times: int = 6):
    """The phone call and the clips (48 s) `times` over: no 30 s window repeats itself, which would
    make Whisper's compression-ratio check fall back to sampling (slow, and not what a real file does)."""
    parts = ["pyannote", *CLIPS] * times
    return b"".join(speech_pcm(p)[0] for p in parts), " ".join(speech_pcm(p)[1] for p in parts)


@pytest.mark.slow
def test_a_client_that_leaves_a_streamed_transcription_frees_its_slot(server, speech_pcm):
    import httpx

    from helpers import eventually

    long_file = encode_webm_opus(_long_recording(speech_pcm)[0])
    before = server.log().count("client left")
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        with http.stream("POST", "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {TOKEN}"},
                         files={"file": ("long.webm", long_file)}, data={"model": "whisper-1", "stream": "true"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping httpx's iterator would close the connection now
            first = next(line for line in lines if line.startswith("data: "))
            assert "transcript.text.delta" in first
            assert server.get("/health").json()["active_connections"] == 1
            assert server.log().count("client left") == before
        # the client closed the connection mid-transcription
    assert eventually(lambda: server.log().count("client left") > before, timeout=60), "the transcription was not stopped"
    assert eventually(lambda: server.get("/health").json()["active_connections"] == 0, timeout=60)


def test_file_requests_count_toward_the_per_address_limit(clip_file):
    path, _ = clip_file("arctic_a0009")
    with running_server("--model", "tiny.en", "--device", "cpu", "--max-connections-per-ip", "1", "--pcm-input") as limited:
        client = openai.OpenAI(api_key="unused", base_url=limited.base_url + "/v1", max_retries=0)

        async def scenario():
            ws, first, _ = await open_session(limited.ws_url)  # this address's one connection
            try:
                assert first and first["type"] == "config"
                with pytest.raises(openai.RateLimitError) as caught:
                    await asyncio.to_thread(_transcribe, client, path)
                return caught.value
            finally:
                await ws.close()

        refusal = run(scenario())
        assert refusal.status_code == 429 and refusal.body["type"] == "rate_limit_error"
        from helpers import eventually

        assert eventually(lambda: limited.get("/health").json()["active_connections"] == 0)
        assert _transcribe(client, path).text  # the address's count came back


# -- files fill idle capacity ------------------------------------------------------------


@pytest.mark.slow
def test_a_long_file_uploaded_during_a_live_stream_does_not_make_it_fail(server, speech_pcm):
    harvard, reference = speech_pcm("harvard")
    long_pcm, long_reference = _long_recording(speech_pcm)
    long_file = encode_webm_opus(long_pcm)
    client = openai.AsyncOpenAI(api_key=TOKEN, base_url=server.base_url + "/v1", max_retries=0, timeout=300)

    async def scenario():
        live = asyncio.create_task(stream(f"{server.ws_url}?token={TOKEN}", harvard, pcm=True, speed=1.0))
        await asyncio.sleep(1.0)  # the live stream holds its slot and is transcribing
        upload = await client.audio.transcriptions.create(model="whisper-1", file=("long.webm", long_file))
        return await live, upload

    live, upload = run(scenario())
    check_finished_stream(live, reference, 0.10)
    assert wer(long_reference, upload.text) <= 0.25  # tiny.en on a real phone call


# -- the device worker's file job ----------------------------------------------------------


class _RecordingBackend:
    """A backend whose every job takes a while and writes down when it ran (one lane: jobs run in turn)."""

    name = "recording"
    device = "cpu"
    model_label = "none"

    def __init__(self) -> None:
        self.ran = []
        self.lock = threading.Lock()

    def _work(self, what: str) -> None:
        time.sleep(0.2)
        with self.lock:
            self.ran.append(what)

    def transcribe_batch(self, requests):
        self._work(f"live-{int(requests[0].audio[0])}")
        return [TranscribeResult() for _ in requests]

    def transcribe_file(self, request):
        self._work("file-start")

        def windows():
            for i in range(2):
                self._work(f"file-window-{i}")
                yield FileSegment(i, i * 30.0, (i + 1) * 30.0, f" window {i}")

        return FileTranscription("en", 60.0), windows()

    def close(self) -> None:
        pass


def test_live_steps_waiting_run_before_a_waiting_file_step():
    backend = _RecordingBackend()
    worker = DeviceWorker("cpu", backend, lanes=1)
    from whisperlivekit.asr.types import TranscribeRequest

    def live(n: int):
        return worker.transcribe(TranscribeRequest(np.full(1600, n, dtype=np.float32)))

    async def scenario():
        first = asyncio.create_task(live(1))  # occupies the only lane
        await asyncio.sleep(0.05)
        file_job = asyncio.create_task(worker.file_segments(FileTranscribeRequest(np.zeros(16000, dtype=np.float32))))
        await asyncio.sleep(0.01)
        second, third = asyncio.create_task(live(2)), asyncio.create_task(live(3))  # queued after the file job
        info, segments = await file_job
        texts = [s.text async for s in segments]
        await asyncio.gather(first, second, third)
        return info, texts

    try:
        info, texts = run(scenario())
    finally:
        worker.close()
    assert info.duration_s == 60.0 and texts == [" window 0", " window 1"]
    assert backend.ran[:4] == ["live-1", "live-2", "live-3", "file-start"], backend.ran


def test_a_backend_without_a_file_loop_says_so():
    class StreamingOnly:
        name = "streaming-only"
        device = "cpu"
        model_label = "none"

        def transcribe_batch(self, requests):
            return [TranscribeResult() for _ in requests]

        def close(self) -> None:
            pass

    worker = DeviceWorker("cpu", StreamingOnly(), lanes=1)
    try:
        with pytest.raises(NotSupported, match="streaming-only backend cannot transcribe files"):
            run(worker.file_segments(FileTranscribeRequest(np.zeros(16000, dtype=np.float32))))
    finally:
        worker.close()
    status, body = openai_error(NotSupported("no"))
    assert status == 501 and body["error"]["type"] == "invalid_request_error"
