"""`VadStream` with the real Silero model (it ships in the silero-vad package): no server, no Whisper."""

from __future__ import annotations

import numpy as np
import pytest

from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.audio.vad import SileroVadModel, VadStream
from whisperlivekit.client import pcm_to_float


@pytest.fixture(scope="module")
def model() -> SileroVadModel:
    return SileroVadModel()


@pytest.fixture(scope="module")
def speech(speech_pcm) -> np.ndarray:
    """ARCTIC a0007 (one man, one sentence; a 4 s clip, voiced ~0.4-3.5 s) after 1 s and before 2 s of silence."""
    pcm, _ = speech_pcm("arctic_a0007")
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return np.concatenate([silence, pcm_to_float(pcm), silence, silence])


def feed(model: SileroVadModel, stream: VadStream, audio: np.ndarray, piece_s: float = 0.1) -> list:
    piece = int(piece_s * SAMPLE_RATE)
    return [event for i in range(0, len(audio), piece) for event in stream.process(model, audio[i:i + piece])]


def test_silence_and_low_noise_start_no_speech(model):
    quiet = np.random.default_rng(0).normal(0, 0.001, 5 * SAMPLE_RATE).astype(np.float32)
    stream = VadStream()
    assert feed(model, stream, np.zeros(3 * SAMPLE_RATE, dtype=np.float32)) + feed(model, stream, quiet) == []
    assert not stream.speech_seen


def test_a_spoken_sentence_is_one_start_and_one_end_around_it(model, speech):
    stream = VadStream(min_silence_s=0.5)
    events = feed(model, stream, speech)
    assert [kind for kind, _ in events] == ["start", "end"], events
    (_, start_s), (_, end_s) = events
    speech_end_s = len(speech) / SAMPLE_RATE - 2.0
    assert 1.0 <= start_s <= 1.8, start_s  # not in the silence we added; the voice starts ~1.4 s in
    assert speech_end_s - 1.0 <= end_s <= speech_end_s + 0.6, (end_s, speech_end_s)
    assert stream.speech_seen and not stream.in_speech


def test_events_do_not_depend_on_how_the_audio_is_cut_into_frames(model, speech):
    whole = VadStream().process(model, speech)
    assert feed(model, VadStream(), speech, piece_s=0.1) == whole
    assert feed(model, VadStream(), speech, piece_s=0.037) == whole  # frames that are not whole windows


def test_streams_sharing_one_model_keep_their_own_state(model, speech):
    alone = feed(model, VadStream(), speech)
    a, b = VadStream(), VadStream()
    silence = np.zeros_like(speech)
    piece = int(0.1 * SAMPLE_RATE)
    events_a, events_b = [], []
    for i in range(0, len(speech), piece):  # interleaved: speech on a, silence on b
        events_a += a.process(model, speech[i:i + piece])
        events_b += b.process(model, silence[i:i + piece])
    assert events_a == alone and events_b == []


def test_many_streams_in_one_call_get_what_each_gets_alone(model, speech):
    """Speech, silence, the speech shifted, and noise, fed together in 0.1 s pieces: the same events as alone,
    the same probabilities (Silero's rows are independent), in one call per window index."""
    rng = np.random.default_rng(1)
    audios = [speech, np.zeros_like(speech), np.roll(speech, SAMPLE_RATE // 3),
              rng.normal(0, 0.01, len(speech)).astype(np.float32)]
    alone = [feed(model, VadStream(), audio) for audio in audios]
    streams = [VadStream() for _ in audios]
    together: list = [[] for _ in audios]
    piece = int(0.1 * SAMPLE_RATE)
    calls_before = model.calls
    for i in range(0, len(speech), piece):
        for n, events in enumerate(model.process_many([(s, a[i:i + piece]) for s, a in zip(streams, audios)])):
            together[n] += events
    assert together == alone and alone[0] and not alone[1]
    assert model.calls - calls_before == len(speech) // 512  # one call per window index, not per stream

    single, batch = VadStream(), [VadStream(), VadStream()]
    windows = speech[SAMPLE_RATE: SAMPLE_RATE + 512 * 8].reshape(8, 512)
    for k, window in enumerate(windows):
        p_single = model.window_probability(single, window)
        if k % 2:  # a stream moves between batched and single calls, as on the device worker's lane
            p_batch = [model.window_probability(batch[0], window)]
        else:
            p_batch = model.window_probabilities(batch, np.stack([window, np.zeros(512, np.float32)]))
        assert abs(p_single - float(p_batch[0])) < 1e-5
