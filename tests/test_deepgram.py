"""`WS /v1/listen` spoken to by Deepgram's own SDK (`deepgram-sdk` 7.x, unmodified) against a real server.

Audio is streamed at 3x real time where speed does not change what is tested (it is still paced,
so the server's audio-rate and backlog rules hold). Unit tests of the query parsing and the
event → message translation need no server and come last.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional

import pytest
import websockets
from starlette.datastructures import QueryParams

from conftest import pace, run, running_server, wer
from whisperlivekit.api import errors as error_table
from whisperlivekit.api.deepgram_messages import ListenOptions, ListenTranslator, parse_options
from whisperlivekit.asr.types import Word
from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.errors import BadParameters
from whisperlivekit.events import BY_FINALIZE, BY_VAD, Committed, Partial, SpeechStarted

deepgram = pytest.importorskip("deepgram")
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment  # noqa: E402
from deepgram.core.api_error import ApiError  # noqa: E402

pytestmark = pytest.mark.slow  # the adapter suites: every test here streams to a real server through the SDK (CI runs them; the fast tier does not)

CLIPS = [("harvard", 0.10), ("arctic_a0007", 0.10), ("arctic_a0009", 0.25)]  # the /asr bounds (a0009: "Greggs in" offline too)
SPEED = 3.0  # times real time
TOKEN = "dg-test-token"


def sdk_client(port: int, api_key: str = TOKEN) -> AsyncDeepgramClient:
    """The SDK pointed at this server, as docs/protocols.md tells users to do."""
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    env = DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base)
    return AsyncDeepgramClient(api_key=api_key, environment=env)


@dataclass
class Session:
    messages: List[dict] = field(default_factory=list)
    close_code: Optional[int] = None
    finalize_answer_index: Optional[int] = None  # index of the first from_finalize Results

    def of_type(self, kind: str) -> List[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def finals(self) -> List[dict]:
        return [m for m in self.of_type("Results") if m["is_final"]]

    @property
    def interims(self) -> List[dict]:
        return [m for m in self.of_type("Results") if not m["is_final"]]

    @property
    def text(self) -> str:
        return " ".join(t for t in (r["channel"]["alternatives"][0]["transcript"] for r in self.finals) if t)


async def stream_with_sdk(port: int, audio: bytes, bytes_per_s: int, *, finalize_after_s: Optional[float] = None,
                          api_key: str = TOKEN, **params: str) -> Session:
    """Send `audio` paced at SPEED x real time in 100 ms frames, then CloseStream; collect everything."""
    session = Session()
    frame = bytes_per_s // 10
    async with sdk_client(port, api_key).listen.v1.connect(model="nova-3", **params) as connection:
        async def read() -> None:
            async for message in connection:
                session.messages.append(message.dict() if hasattr(message, "dict") else message)

        reader = asyncio.create_task(read())
        for sent in range(0, len(audio), frame):
            await connection.send_media(audio[sent:sent + frame])
            await asyncio.sleep(0.1 / pace(SPEED))
            if finalize_after_s is not None and sent >= finalize_after_s * bytes_per_s:
                finalize_after_s = None
                before = len(session.messages)
                await connection.send_finalize()
                for _ in range(300):  # the answer comes before any more audio is sent
                    answers = [i for i, m in enumerate(session.messages[before:], before) if m.get("from_finalize")]
                    if answers:
                        session.finalize_answer_index = answers[0]
                        break
                    await asyncio.sleep(0.05)
        await connection.send_close_stream()
        await asyncio.wait_for(reader, 120)
        session.close_code = connection._websocket.close_code
    return session


def resample(pcm: bytes, rate_hz: int) -> bytes:
    return subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "pipe:0",
                           "-f", "s16le", "-ar", str(rate_hz), "pipe:1"], input=pcm, capture_output=True, check=True).stdout


def silence(seconds: float, rate_hz: int = 16_000) -> bytes:
    return b"\x00\x00" * int(seconds * rate_hz)


@pytest.fixture(scope="module")
def server():
    with running_server("--api-token", TOKEN) as server:
        yield server


# -- accuracy per input format ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_linear16_at_16_khz_is_transcribed_within_wer_bound(server, speech_pcm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    session = run(stream_with_sdk(server.port, pcm, 32_000, encoding="linear16", sample_rate="16000"))
    error_rate = wer(reference, session.text)
    print(f"Deepgram linear16 16 kHz {clip}: WER {error_rate:.1%}")
    assert error_rate <= max_wer, session.text


@pytest.mark.slow
@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_linear16_at_48_khz_is_resampled_and_transcribed_within_wer_bound(server, speech_pcm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    session = run(stream_with_sdk(server.port, resample(pcm, 48_000), 96_000, encoding="linear16", sample_rate="48000"))
    error_rate = wer(reference, session.text)
    print(f"Deepgram linear16 48 kHz {clip}: WER {error_rate:.1%}")
    assert error_rate <= max_wer, session.text


@pytest.mark.slow
@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_webm_opus_without_encoding_goes_through_ffmpeg_within_wer_bound(server, speech_pcm, webm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    data = webm(pcm)
    bytes_per_s = max(1000, int(len(data) / (len(pcm) / 32_000)))  # paced by the clip's duration
    session = run(stream_with_sdk(server.port, data, bytes_per_s))
    error_rate = wer(reference, session.text)
    print(f"Deepgram WebM/Opus {clip}: WER {error_rate:.1%}")
    assert error_rate <= max_wer, session.text


# -- the message flow -----------------------------------------------------------------
@pytest.fixture(scope="module")
def harvard_session(server, speech_pcm):
    pcm, reference = speech_pcm("harvard")
    session = run(stream_with_sdk(server.port, pcm, 32_000, encoding="linear16", sample_rate="16000",
                                  interim_results="true"))
    return session, reference, len(pcm) / 32_000


def test_interim_results_arrive_before_the_final_ones_that_settle_them(harvard_session):
    session, _, _ = harvard_session
    results = session.of_type("Results")
    assert session.interims, "interim_results=true gave no interim results"
    first_interim = results.index(session.interims[0])
    assert first_interim < results.index(session.finals[-1])
    assert all(r["start"] >= 0 and r["duration"] >= 0 for r in results)


def test_final_results_tile_the_audio_in_order(harvard_session):
    session, _, _ = harvard_session
    finals = session.finals
    for previous, current in zip(finals, finals[1:]):
        assert current["start"] == pytest.approx(previous["start"] + previous["duration"], abs=0.002)


def test_words_carry_times_and_whisper_probabilities_as_confidence(harvard_session):
    session, _, _ = harvard_session
    words = [w for r in session.finals for w in r["channel"]["alternatives"][0]["words"]]
    assert len(words) >= 25
    assert all(0 <= w["start"] <= w["end"] for w in words)
    assert all(w["word"] == w["word"].lower() and w["punctuated_word"] for w in words)
    assert any(w["punctuated_word"].endswith(".") and not w["word"].endswith(".") for w in words)
    confidences = {w["confidence"] for w in words}
    assert len(confidences) > 3 and all(0 < c <= 1 for c in confidences), "confidence must be Whisper's, not a constant"


def test_close_stream_gives_the_final_results_then_metadata_and_a_normal_close(harvard_session):
    session, reference, duration_s = harvard_session
    assert session.messages[-1]["type"] == "Metadata"
    assert session.messages[-2]["type"] == "Results" and session.messages[-2]["is_final"]
    metadata = session.messages[-1]
    assert metadata["request_id"] == session.finals[0]["metadata"]["request_id"]
    assert metadata["duration"] == pytest.approx(duration_s, abs=0.1)
    assert metadata["channels"] == 1
    assert session.close_code == 1000
    assert wer(reference, session.text) <= 0.10  # nothing lost at the end


def test_deepgram_streams_are_counted_under_their_protocol(server, harvard_session):
    metrics = server.get("/metrics").text
    assert 'whisperlivekit_streams_total{protocol="deepgram"}' in metrics


@pytest.fixture(scope="module")
def paused_session(server, speech_pcm):
    """Two ARCTIC utterances with 1.5 s of silence between them, with every event switched on."""
    first, first_text = speech_pcm("arctic_a0007")
    second, second_text = speech_pcm("arctic_a0009")
    audio = first + silence(1.5) + second + silence(0.5)
    session = run(stream_with_sdk(server.port, audio, 32_000, encoding="linear16", sample_rate="16000",
                                  interim_results="true", endpointing="300", utterance_end_ms="1000",
                                  vad_events="true"))
    return session, (first_text, second_text), len(first) / 32_000 + 1.5


def test_speech_final_marks_the_end_of_each_utterance(paused_session):
    session, (first_text, _), _ = paused_session
    finals = session.finals
    ends = [i for i, r in enumerate(finals) if r["speech_final"]]
    assert len(ends) >= 2, [(r["speech_final"], r["channel"]["alternatives"][0]["transcript"]) for r in finals]
    first_utterance = " ".join(r["channel"]["alternatives"][0]["transcript"] for r in finals[:ends[0] + 1])
    assert wer(first_text, first_utterance) <= 0.15, first_utterance


@pytest.mark.slow
def test_endpointing_longer_than_the_pause_keeps_both_utterances_in_one(server, speech_pcm):
    first, _ = speech_pcm("arctic_a0007")
    second, _ = speech_pcm("arctic_a0009")
    audio = first + silence(1.5) + second + silence(0.5)
    session = run(stream_with_sdk(server.port, audio, 32_000, encoding="linear16", sample_rate="16000",
                                  endpointing="2500"))
    ends = [r for r in session.finals if r["speech_final"]]
    assert len(ends) == 1 and ends[0] is session.finals[-1], [
        (r["speech_final"], r["channel"]["alternatives"][0]["transcript"]) for r in session.finals]


def test_utterance_end_follows_the_pause_after_the_last_word(paused_session):
    session, _, second_starts_s = paused_session
    utterance_ends = session.of_type("UtteranceEnd")
    assert utterance_ends, "utterance_end_ms=1000 and a 1.5 s pause gave no UtteranceEnd"
    assert utterance_ends[0]["last_word_end"] < second_starts_s
    assert utterance_ends[0]["channel"] == [0, 1]


def test_speech_started_is_sent_when_each_utterance_begins(paused_session):
    session, _, second_starts_s = paused_session
    starts = [m["timestamp"] for m in session.of_type("SpeechStarted")]
    assert len(starts) >= 2, starts
    assert starts[0] < 0.6
    assert any(abs(t - second_starts_s) < 0.6 for t in starts[1:]), (starts, second_starts_s)


@pytest.mark.slow
def test_finalize_mid_stream_commits_what_was_sent_and_more_audio_loses_nothing(server, speech_pcm):
    pcm, reference = speech_pcm("harvard")
    session = run(stream_with_sdk(server.port, pcm, 32_000, finalize_after_s=5.0, encoding="linear16",
                                  sample_rate="16000"))
    assert session.finalize_answer_index is not None, "no Results with from_finalize after Finalize"
    answer = session.messages[session.finalize_answer_index]
    assert answer["is_final"]
    settled = [r for r in session.messages[:session.finalize_answer_index + 1] if r.get("is_final")]
    assert settled[-1]["start"] + settled[-1]["duration"] >= 4.5  # everything up to the Finalize is final
    error_rate = wer(reference, session.text)
    print(f"Deepgram Finalize at 5 s, harvard: WER {error_rate:.1%}")
    assert error_rate <= 0.10, session.text
    assert session.messages[-1]["type"] == "Metadata"


# -- refusals ---------------------------------------------------------------------------
def test_a_wrong_token_is_refused_with_401_and_deepgrams_error_body(server):
    async def attempt() -> None:
        async with sdk_client(server.port, api_key="wrong").listen.v1.connect(model="nova-3"):
            pass

    with pytest.raises(ApiError) as refused:
        run(attempt())
    assert refused.value.status_code == 401

    async def raw() -> websockets.exceptions.InvalidStatus:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/listen",
                                          additional_headers={"Authorization": "Token wrong"}):
                pass
        except websockets.exceptions.InvalidStatus as exc:
            return exc
        raise AssertionError("a wrong token was accepted")

    body = json.loads(run(raw()).response.body)
    assert body["err_code"] == "INVALID_AUTH" and body["request_id"]


def test_bad_parameters_are_refused_with_400_before_the_handshake(server):
    async def attempt() -> None:
        async with sdk_client(server.port).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="4000"):
            pass

    with pytest.raises(ApiError) as refused:
        run(attempt())
    assert refused.value.status_code == 400


def test_a_full_server_refuses_with_503_and_retry_after():
    with running_server("--max-cpu-connections", "1", "--min-audio-rate", "0", "--device", "cpu") as full:
        async def scenario() -> websockets.exceptions.InvalidStatus:
            async with websockets.connect(f"ws://127.0.0.1:{full.port}/v1/listen?encoding=linear16&sample_rate=16000"):
                with pytest.raises(ApiError) as refused:
                    async with sdk_client(full.port).listen.v1.connect(model="nova-3"):
                        pass
                assert refused.value.status_code == 503
                try:
                    async with websockets.connect(f"ws://127.0.0.1:{full.port}/v1/listen"):
                        pass
                except websockets.exceptions.InvalidStatus as exc:
                    return exc
            raise AssertionError("the second connection was accepted")

        refusal = run(scenario())
        assert refusal.response.headers["Retry-After"]
        assert json.loads(refusal.response.body)["err_code"] == "TOO_MANY_REQUESTS"
        async def after() -> int:  # the slot came back: a new stream is admitted
            session = await stream_with_sdk(full.port, silence(0.5), 32_000, api_key="any",
                                            encoding="linear16", sample_rate="16000")
            return session.close_code

        assert run(after()) == 1000


# -- units: options, translation, the error table -------------------------------------
def _options(query: str) -> ListenOptions:
    return parse_options(QueryParams(query), "en", frozenset({"en"}), "tiny.en")


def test_linear16_at_48_khz_selects_pcm_resampling_and_no_encoding_selects_a_container():
    assert _options("encoding=linear16&sample_rate=48000").input_format == InputFormat(pcm=True, sample_rate_hz=48_000)
    assert _options("encoding=linear16&sample_rate=16000").input_format.passthrough
    assert _options("").input_format == InputFormat(pcm=False)


@pytest.mark.parametrize("query", ["encoding=linear16", "encoding=linear16&sample_rate=96000", "encoding=mulaw&sample_rate=8000",
                                   "interim_results=maybe", "language=fr", "utterance_end_ms=soon", "multichannel=true"])
def test_unsupported_or_malformed_parameters_are_bad_parameters(query):
    with pytest.raises(BadParameters):
        _options(query)


def test_language_multi_means_detection_and_regions_are_dropped():
    assert parse_options(QueryParams("language=multi"), "en", frozenset({"en", "de"}), "tiny").language is None
    assert parse_options(QueryParams("language=de-DE"), "en", frozenset({"en", "de"}), "tiny").language == "de"
    assert _options("endpointing=false").endpointing is False
    assert _options("endpointing=1200").endpointing_s == pytest.approx(1.2)


def test_a_finalize_with_nothing_new_still_answers_with_an_empty_from_finalize_result():
    translator = ListenTranslator(_options("interim_results=true"), "rid", "tiny.en")
    word = Word(0.5, 0.9, " Hello.", 0.8)
    assert translator.on_event(Partial((word,)), 1.0)[0]["is_final"] is False
    [final] = translator.on_event(Committed((word,)), 1.0)
    assert final["channel"]["alternatives"][0]["words"][0] == {
        "word": "hello", "punctuated_word": "Hello.", "start": 0.5, "end": 0.9, "confidence": 0.8}
    [with_stop] = translator.on_event(Committed((Word(1.0, 1.2, " World", 0.9), Word(1.2, 1.3, ".", 0.5))), 1.3)
    assert [(w["word"], w["punctuated_word"]) for w in with_stop["channel"]["alternatives"][0]["words"]] == [
        ("world", "World.")]  # Whisper's separate "." joins its word, as Deepgram shows it
    [answer] = translator.on_event(Committed((), BY_FINALIZE), 1.3)
    assert answer["from_finalize"] and answer["is_final"] and not answer["speech_final"]
    [closing] = translator.on_event(Committed((), BY_VAD), 2.0)  # words since the last speech_final
    assert closing["speech_final"] and closing["start"] == pytest.approx(1.3)
    assert translator.on_event(Committed((), BY_VAD), 3.0) == []  # nothing new: no empty result
    assert translator.on_event(SpeechStarted(0.1), 0.2) == []  # vad_events not asked for


def test_every_error_in_the_table_has_a_deepgram_row():
    assert set(error_table.DEEPGRAM_ENDINGS) == set(error_table.ENDINGS)


def test_undecodable_audio_gets_deepgrams_error_then_close_1008_and_leaves_no_ffmpeg(server):
    from helpers import eventually, ffmpeg_children

    async def scenario():
        url = f"ws://127.0.0.1:{server.port}/v1/listen"
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {TOKEN}"}) as ws:
            messages = []
            try:
                for _ in range(20):
                    await ws.send(b"\x13not audio at all\x00" * 400)
                    await asyncio.sleep(0.05)
                await ws.send(json.dumps({"type": "CloseStream"}))
                async for message in ws:
                    messages.append(json.loads(message))
            except websockets.exceptions.ConnectionClosed:
                pass
            return messages, ws.close_code, ws.close_reason

    messages, code, reason = run(scenario())
    assert code == 1008 and reason == "DATA-0000"
    assert messages[-1]["type"] == "Error" and messages[-1]["code"] == "DATA-0000"
    eventually(lambda: not ffmpeg_children(server.proc.pid))


def test_keepalive_and_unknown_control_messages_do_not_end_the_stream(server, speech_pcm):
    pcm, reference = speech_pcm("arctic_a0007")

    async def scenario() -> Session:
        session = Session()
        async with sdk_client(server.port).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000") as c:
            reader = asyncio.create_task(_collect(c, session))
            await c.send_keep_alive()
            await c._websocket.send(json.dumps({"type": "SomethingNew"}))
            for sent in range(0, len(pcm), 3200):
                await c.send_media(pcm[sent:sent + 3200])
                await asyncio.sleep(0.1 / pace(SPEED))
            await c.send_close_stream()
            await asyncio.wait_for(reader, 60)
            session.close_code = c._websocket.close_code
        return session

    session = run(scenario())
    assert session.close_code == 1000 and session.messages[-1]["type"] == "Metadata"
    assert wer(reference, session.text) <= 0.10


async def _collect(connection, session: Session) -> None:
    async for message in connection:
        session.messages.append(message.dict() if hasattr(message, "dict") else message)


@pytest.mark.slow
def test_diarize_puts_a_speaker_on_every_word_and_tells_two_voices_apart(speech_pcm):
    man, _ = speech_pcm("arctic_a0007")
    woman, _ = speech_pcm("arctic_a0009")
    audio = man + silence(0.8) + woman + silence(0.8) + man + silence(0.8)
    with running_server("--diarization") as diarizing:
        session = run(stream_with_sdk(diarizing.port, audio, 32_000, encoding="linear16", sample_rate="16000",
                                      diarize="true"))
    words = [w for r in session.finals for w in r["channel"]["alternatives"][0]["words"]]
    assert words and all(isinstance(w.get("speaker"), int) and w["speaker"] >= 0 for w in words)
    assert len({w["speaker"] for w in words}) >= 2, [(w["word"], w["speaker"]) for w in words]


@pytest.mark.slow
def test_drain_deadline_ends_a_stream_with_its_final_results_metadata_and_1001(speech_pcm):
    import signal

    from conftest import wer_of_prefix

    pcm, reference = speech_pcm("harvard")
    with running_server("--drain-timeout", "3") as draining:
        async def scenario() -> Session:
            session = Session()
            async with sdk_client(draining.port).listen.v1.connect(model="nova-3", encoding="linear16",
                                                                     sample_rate="16000") as c:
                reader = asyncio.create_task(_collect(c, session))
                signalled = False
                try:
                    for sent in range(0, len(pcm), 3200):
                        await c.send_media(pcm[sent:sent + 3200])
                        await asyncio.sleep(0.1)
                        # mid-stream, a sentence under way: a stream's first word can be final at 0.8 s, and one
                        # cut 3 s later ends on words heard in part ("Glue the shape to the": 1 error in 14)
                        if not signalled and len(session.text.split()) >= 3:
                            draining.proc.send_signal(signal.SIGTERM)
                            signalled = True
                except websockets.exceptions.ConnectionClosed:
                    pass
                await asyncio.wait_for(reader, 60)
                session.close_code = c._websocket.close_code
            return session

        session = run(scenario())
        assert draining.proc.wait(timeout=60) == 0
    assert session.close_code == 1001
    assert session.messages[-1]["type"] == "Metadata"
    assert session.text and wer_of_prefix(reference, session.text) <= 0.10, session.text


@pytest.mark.slow
def test_misbehaving_clients_never_leak_a_slot_or_an_ffmpeg_process(server, speech_pcm, webm):
    """Non-JSON text, an oversized frame, a vanished client mid-stream, a client that stops after a
    Finalize: each ends its stream, and the server holds nothing afterwards."""
    from helpers import drop_tcp, eventually, ffmpeg_children

    pcm, _ = speech_pcm("arctic_a0007")
    headers = {"Authorization": f"Token {TOKEN}"}
    url = f"ws://127.0.0.1:{server.port}/v1/listen"

    async def one(kind: str) -> Optional[int]:
        query = "" if kind == "vanish_webm" else "?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url + query, additional_headers=headers, max_size=None) as ws:
            try:
                if kind == "not_json":
                    await ws.send(pcm[:3200])
                    await ws.send("hello")
                elif kind == "huge_frame":
                    await ws.send(b"\0" * (8 * 1024 * 1024))
                elif kind == "vanish_webm":
                    await ws.send(webm(pcm)[:6000])
                    await asyncio.sleep(0.3)
                    drop_tcp(ws)
                    return None
                elif kind == "finalize_then_vanish":
                    await ws.send(pcm[:16000])
                    await ws.send(json.dumps({"type": "Finalize"}))
                    drop_tcp(ws)
                    return None
                async for _ in ws:
                    pass
            except websockets.exceptions.ConnectionClosed:
                pass
            return ws.close_code

    async def all_kinds():
        return await asyncio.gather(*(one(k) for k in ("not_json", "huge_frame", "vanish_webm", "finalize_then_vanish")))

    codes = run(all_kinds())
    assert codes[0] == 1008 and codes[1] in (1009, 1008), codes
    eventually(lambda: server.get("/health").json()["active_connections"] == 0, timeout=30)
    eventually(lambda: not ffmpeg_children(server.proc.pid), timeout=30)
