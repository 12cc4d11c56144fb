"""The pieces the engine wires together, without a server: diarization feed, commit lags, the update message,
the step deadline."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy
from whisperlivekit.asr.types import TranscribeResult, Word
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.diarization.feed import DiarizationFeed
from whisperlivekit.engine import oldest_uncommitted_s
from whisperlivekit.metrics import CommitLagMeter
from whisperlivekit.protocol import PipelineView, transcript_update


def test_diarization_feed_groups_100ms_chunks_into_half_second_pieces_and_ends_with_settling_silence():
    async def scenario():
        feed = DiarizationFeed(latency_s=1.0)
        for _ in range(12):  # 1.2 s of audio, all queued before the diarizer looks
            feed.push(np.ones(1600, np.float32))
        feed.end()
        return [piece async for piece in feed.pieces()]

    pieces = asyncio.run(scenario())
    assert sum(int(p.sum()) for p in pieces) == 12 * 1600, "every sample reaches the diarizer once"
    assert len(pieces[-1]) - int(pieces[-1].sum()) == int(1.2 * 16000), "1.0 s latency + 0.2 s of silence at the end"


def test_diarization_feed_waits_for_half_a_second_before_a_piece():
    async def scenario():
        feed = DiarizationFeed(latency_s=0.0)
        pieces = feed.pieces()
        feed.push(np.ones(1600, np.float32))
        first = asyncio.ensure_future(pieces.__anext__())
        await asyncio.sleep(0.05)
        early = first.done()
        for _ in range(4):
            feed.push(np.ones(1600, np.float32))
        piece = await asyncio.wait_for(first, 5)
        return early, len(piece)

    early, size = asyncio.run(scenario())
    assert early is False and size == 8000


def test_commit_lag_is_wall_time_from_the_arrival_of_a_words_end_to_its_commit():
    now = [100.0]
    meter = CommitLagMeter(clock=lambda: now[0])
    for i in range(1, 11):  # 100 ms chunks arriving once per 100 ms
        meter.audio_arrived(i / 10)
        now[0] += 0.1
    now[0] = 102.0
    meter.committed([0.25, 0.95], offset_s=0.0)
    assert [round(x, 2) for x in meter.lags_s] == [round(102.0 - 100.2, 2), round(102.0 - 100.9, 2)]


def test_commit_lag_forgets_arrivals_long_before_the_offset():
    meter = CommitLagMeter(clock=lambda: 0.0)
    for i in range(1000):
        meter.audio_arrived(i / 10)
    meter.committed([], offset_s=90.0)
    assert len(meter._arrivals) == 1000 - 850


def _view(**overrides) -> PipelineView:
    base = dict(committed=[Word(0.0, 0.5, " Hello"), Word(0.5, 1.0, " world")], tentative=[], received_s=2.0,
                transcribed_until_s=1.0, speech_pending=True, vad_silent=False, vad_heard_speech=True,
                finished=False, error=None)
    return PipelineView(**{**base, **overrides})


def test_update_carries_lines_buffer_and_lag():
    update = transcript_update(_view(tentative=[Word(1.0, 1.2, " again")]), pause_s=2.0, no_audio_timeout_s=5.0)
    assert update["status"] == "active_transcription"
    assert [line["text"] for line in update["lines"]] == [" Hello world"]  # WhisperLiveKit keeps the leading spaces
    assert update["buffer_transcription"] == " again"
    assert update["remaining_time_transcription"] == 1.0


def test_update_says_no_audio_detected_only_when_nothing_was_heard_for_the_timeout():  # --no-audio-timeout 5
    quiet = _view(committed=[], received_s=6.0, vad_heard_speech=False, speech_pending=False)
    assert transcript_update(quiet, 2.0, 5.0)["status"] == "no_audio_detected"
    assert transcript_update(_view(committed=[], received_s=6.0), 2.0, 5.0)["status"] == "active_transcription"


def test_a_steps_deadline_runs_from_the_oldest_audio_whose_words_are_not_committed():
    """The device worker serves the stream whose words have waited longest: its deadline is the arrival
    of the audio after its last committed word, not of the audio its last step did not hear."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0, sure_min_probability=None)

    def one_second():
        policy.append_audio(np.zeros(SAMPLE_RATE, np.float32))

    def step(text: str):
        policy.next_request()
        policy.apply(TranscribeResult([Word(0.4 * i, 0.4 * (i + 1), f" {w}", 0.65) for i, w in enumerate(text.split())]))

    one_second()
    assert oldest_uncommitted_s(policy) == 0.0  # nothing heard yet: the buffer's start
    step("the birch")
    one_second()
    step("the birch cano slid")
    one_second()
    # 'the birch' (to 0.8 s) are agreed, 'cano slid' wait for the next vote; the last second is not transcribed
    assert [w.text.strip() for w in policy.committed] == ["the", "birch"]
    assert [w.text.strip() for w in policy.tentative] == ["cano", "slid"]
    assert policy.transcribed_until_s == pytest.approx(2.0)
    assert oldest_uncommitted_s(policy) == pytest.approx(0.8)
    policy.finish()  # all committed: the deadline runs from the audio after the words, at most the step's end
    assert oldest_uncommitted_s(policy) == pytest.approx(policy.transcribed_until_s)
