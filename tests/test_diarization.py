"""Speaker diarization: streamed real speech, per-connection state on a shared model, word assignment."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest

from tests.audio_assets import (
    HARVARD_SENTENCES,
    AssetUnavailable,
    arctic_a0007_wav,
    arctic_a0009_wav,
    harvard_wav,
    read_wav,
)
from whisperlivekit.asr.types import Word
from whisperlivekit.diarization import assign_speakers, choose_backend, diarizer_device, load_diarizer
from whisperlivekit.diarization.types import SpeakerSegment
from whisperlivekit.errors import ModelNotFound

SR = 16_000
CHUNK = SR // 10  # the 100 ms pieces a browser sends
GAP_S = 0.5
TAIL_S = 2.0  # silence after the last turn, so the last labels settle


# -- helpers -------------------------------------------------------------------------
def _clip(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return audio[int(start_s * SR) : int(end_s * SR)]


def _voice_pair(pair: str) -> List[Tuple[str, np.ndarray]]:
    """(speaker, clip) turns of two clearly different real voices, a man and a woman."""
    try:
        if pair == "harvard":
            audio = read_wav(harvard_wav())
            return [(speaker, _clip(audio, start, end)) for _, speaker, start, end in HARVARD_SENTENCES]
        man, woman = read_wav(arctic_a0007_wav()), read_wav(arctic_a0009_wav())
    except AssetUnavailable as exc:
        pytest.skip(f"test audio unavailable: {exc}")
    # "And you always want to see it | in the superlative degree." / "He turned sharply, | and faced Gregson ..."
    return [
        ("man", _clip(man, 0.35, 1.87)),
        ("woman", _clip(woman, 0.0, 1.6)),
        ("man", _clip(man, 1.87, 3.55)),
        ("woman", _clip(woman, 1.6, 3.09)),
    ]


def _conversation(turns: Sequence[Tuple[str, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """The turns with 0.5 s gaps, and a 10 ms reference: speaker name per frame where a voice is audible."""
    audio, reference = [], []
    for speaker, clip in turns:
        clip = clip[: len(clip) // 160 * 160]
        level = 10 * np.log10(np.mean(clip.reshape(-1, 160) ** 2, axis=1) + 1e-10)
        reference += [speaker if audible else "" for audible in level > level.max() - 40]
        audio += [clip, np.zeros(int(GAP_S * SR), np.float32)]
        reference += [""] * int(GAP_S * 100)
    audio.append(np.zeros(int(TAIL_S * SR), np.float32))
    reference += [""] * int(TAIL_S * 100)
    return np.concatenate(audio), np.array(reference, dtype=object)


def _stream(diarizer, state, audio: np.ndarray, chunk: int = CHUNK) -> Dict[int, SpeakerSegment]:
    """Feed `audio` piece by piece; the latest version of every segment `process` returned, by start."""
    returned: Dict[Tuple[float, int], SpeakerSegment] = {}
    for i in range(0, len(audio), chunk):
        for segment in diarizer.process(state, audio[i : i + chunk]):
            returned[(segment.start, segment.speaker)] = segment
    return returned


def _labels(segments: Sequence[SpeakerSegment], n_frames: int) -> np.ndarray:
    labels = np.zeros(n_frames, dtype=int)
    for s in segments:
        labels[int(round(s.start * 100)) : int(round(s.end * 100))] = s.speaker
    return labels


def _best_accuracy(reference: np.ndarray, hypothesis: np.ndarray) -> float:
    """Share of reference speech frames labelled right, under the best speaker-to-name mapping."""
    names = sorted({r for r in reference if r})
    found = sorted({int(h) for h in hypothesis if h})
    speech = reference != ""
    best = 0
    for chosen in itertools.permutations(found, min(len(found), len(names))):
        mapping = dict(zip(chosen, names))
        right = sum(1 for r, h in zip(reference[speech], hypothesis[speech]) if mapping.get(int(h)) == r)
        best = max(best, right)
    return best / speech.sum()


def _valid(segments: Sequence[SpeakerSegment], processed_s: float, max_speakers: int) -> None:
    for s in segments:
        assert 0.0 <= s.start < s.end <= processed_s + 1e-6, s
        assert 1 <= s.speaker <= max_speakers, s
    assert [s.start for s in segments] == sorted(s.start for s in segments)


# -- embedding diarizer (the CPU default) ---------------------------------------------
@pytest.fixture(scope="module")
def embedding_diarizer():
    diarizer = load_diarizer("embedding", "cpu", None, 4)
    yield diarizer
    diarizer.close()


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["harvard", "arctic"])
def test_two_real_voices_streamed_in_100ms_chunks_are_told_apart(embedding_diarizer, pair):
    audio, reference = _conversation(_voice_pair(pair))
    state = embedding_diarizer.new_stream()

    returned = _stream(embedding_diarizer, state, audio)

    assert {s.speaker for s in state.segments} == {1, 2}
    accuracy = _best_accuracy(reference, _labels(state.segments, len(reference)))
    assert accuracy >= 0.95, f"{accuracy:.1%} of reference speech labelled right"
    _valid(state.segments, state.processed_s, 4)
    assert state.processed_s >= len(audio) / SR - embedding_diarizer.latency_s
    assert sorted(returned.values(), key=lambda s: (s.start, s.speaker)) == sorted(
        state.segments, key=lambda s: (s.start, s.speaker)
    ), "process() returns every segment in its final form"


@pytest.mark.slow
def test_labels_on_the_phone_call_are_final_within_2_s_of_their_audio(embedding_diarizer):
    """Issue 17: a word's speaker is settled within 2 s. For every labelled 10 ms frame of the real
    call, streamed in 100 ms chunks: the audio fed when `processed_s` passed it, minus its end.
    Before frames were marked as soon as the window they are nearest to was labelled, they waited
    for the next window too: 85 % within 2 s, median 1.59 s (now 100 %, 0.86 s; docs/diarization.md)."""
    from tests.audio_assets import pyannote_sample

    try:
        call = read_wav(pyannote_sample()[0])
    except AssetUnavailable as exc:
        pytest.skip(f"test audio unavailable: {exc}")
    state = embedding_diarizer.new_stream()
    fed_s, processed_s = [], []
    for i in range(0, len(call), CHUNK):
        embedding_diarizer.process(state, call[i : i + CHUNK])
        fed_s.append(min(i + CHUNK, len(call)) / SR)
        processed_s.append(state.processed_s)
    delays = [fed_s[np.searchsorted(processed_s, t + 0.01 - 1e-9)] - (t + 0.01)
              for s in state.segments for t in np.arange(s.start, s.end, 0.01) if t + 0.01 <= processed_s[-1]]
    assert len(delays) > 1500, "the call has ~20 s of speech"
    within = float(np.mean(np.array(delays) <= 2.0))
    assert within >= 0.95 and float(np.median(delays)) <= 1.2, (within, float(np.median(delays)), max(delays))
    assert len({s.speaker for s in state.segments}) == 2


def test_embedding_streams_on_one_model_keep_their_own_state(embedding_diarizer):
    one, _ = _conversation(_voice_pair("harvard"))
    other, _ = _conversation(_voice_pair("arctic"))
    one_alone, other_alone = embedding_diarizer.new_stream(), embedding_diarizer.new_stream()
    _stream(embedding_diarizer, one_alone, one)
    _stream(embedding_diarizer, other_alone, other)

    first, second = embedding_diarizer.new_stream(), embedding_diarizer.new_stream()
    for i in range(0, max(len(one), len(other)), CHUNK):
        embedding_diarizer.process(first, one[i : i + CHUNK])
        embedding_diarizer.process(second, other[i : i + CHUNK])

    assert first.segments == one_alone.segments
    assert second.segments == other_alone.segments
    assert first.processed_s == one_alone.processed_s


@pytest.mark.slow
def test_embedding_labels_do_not_depend_on_chunk_size(embedding_diarizer):
    audio, _ = _conversation(_voice_pair("arctic"))
    by_100ms, by_odd_pieces = embedding_diarizer.new_stream(), embedding_diarizer.new_stream()
    _stream(embedding_diarizer, by_100ms, audio)
    _stream(embedding_diarizer, by_odd_pieces, audio, chunk=4567)
    assert by_odd_pieces.segments == by_100ms.segments


@pytest.mark.slow
def test_silence_gives_no_speakers(embedding_diarizer):
    state = embedding_diarizer.new_stream()
    assert _stream(embedding_diarizer, state, np.zeros(5 * SR, np.float32)) == {}
    assert state.segments == [] and state.processed_s > 3.0


# -- Sortformer (NeMo), with a tiny random-weight model --------------------------------
@pytest.fixture(scope="module")
def tiny_nemo(tmp_path_factory):
    pytest.importorskip("nemo.collections.asr", reason="pip install 'whisperlivekit[diarization]'")
    from tests.sortformer_tiny import build_tiny_sortformer_nemo

    return build_tiny_sortformer_nemo(tmp_path_factory.mktemp("sortformer") / "tiny_sortformer.nemo")


@pytest.fixture(scope="module")
def sortformer(tiny_nemo):
    diarizer = load_diarizer("sortformer", "cpu", str(tiny_nemo), 4)
    yield diarizer
    diarizer.close()


@pytest.fixture(scope="module")
def call_audio() -> np.ndarray:
    audio, _ = _conversation(_voice_pair("harvard"))
    return audio


@pytest.mark.slow
def test_sortformer_state_advances_chunk_by_chunk(sortformer, call_audio):
    state = sortformer.new_stream()
    assert state.processed_s == 0.0 and state.segments == []
    progress = []
    for i in range(0, len(call_audio), CHUNK):
        sortformer.process(state, call_audio[i : i + CHUNK])
        progress.append(state.processed_s)
        received_s = min(len(call_audio), i + CHUNK) / SR
        assert received_s - sortformer.latency_s - 0.48 <= state.processed_s <= received_s
    assert progress == sorted(progress) and progress[-1] > 10.0
    steps = {round(b - a, 6) for a, b in zip(progress, progress[1:])} - {0.0}
    assert steps == {0.48}, "one 6-frame chunk (480 ms) at a time"
    assert state.nemo.spkcache.shape[1] + state.nemo.fifo.shape[1] > 0, "speaker cache / FIFO filled"
    _valid(state.segments, state.processed_s, 4)


@pytest.mark.slow
def test_sortformer_streams_on_one_model_stay_independent(sortformer, call_audio):
    alone = sortformer.new_stream()
    _stream(sortformer, alone, call_audio)

    first, second = sortformer.new_stream(), sortformer.new_stream()
    other = call_audio[::-1].copy()  # a different signal interleaved with the same one
    for i in range(0, len(call_audio), CHUNK):
        sortformer.process(first, call_audio[i : i + CHUNK])
        sortformer.process(second, other[i : i + CHUNK])

    assert first.segments == alone.segments
    assert first.processed_s == alone.processed_s


@pytest.mark.slow
def test_sortformer_streamed_output_equals_offline_streaming(sortformer, call_audio):
    """100 ms pieces give exactly what NeMo's own forward_streaming gives on the whole recording."""
    import torch

    state = sortformer.new_stream()
    _stream(sortformer, state, call_audio, chunk=1234)

    model = sortformer._model
    with torch.inference_mode():
        signal = torch.from_numpy(call_audio).unsqueeze(0)
        features, n_frames = model.preprocessor(input_signal=signal, length=torch.tensor([len(call_audio)]))
        preds = model.forward_streaming(features[:, :, : int(n_frames[0])], n_frames)[0]
    n = int(round(state.processed_s / sortformer.frame_s))
    offline = []
    for frame, active in enumerate((preds[:n] > 0.5).numpy()):
        offline += [(round(frame * 0.08, 6), int(k) + 1) for k in np.flatnonzero(active)]
    streamed = [
        (round(frame * 0.08, 6), s.speaker)
        for s in state.segments
        for frame in range(int(round(s.start / 0.08)), int(round(s.end / 0.08)))
    ]
    assert sorted(streamed) == sorted(offline)


@pytest.mark.slow
def test_sortformer_model_is_on_the_requested_device(sortformer):
    assert sortformer.device == "cpu"
    assert {p.device.type for p in sortformer._model.parameters()} == {"cpu"}
    assert sortformer.new_stream().nemo.spkcache.device.type == "cpu"


@pytest.mark.slow
def test_sortformer_max_speakers_caps_labels(tiny_nemo, call_audio):
    diarizer = load_diarizer("sortformer", "cpu", str(tiny_nemo), 2)
    state = diarizer.new_stream()
    _stream(diarizer, state, call_audio)
    _valid(state.segments, state.processed_s, 2)


@pytest.mark.slow
def test_sortformer_hub_name_offline_fails_fast_with_model_not_found(monkeypatch, tmp_path):
    pytest.importorskip("nemo.collections.asr")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match="cannot be reached|not in the local"):
        load_diarizer("sortformer", "cpu", "nvidia/diar_streaming_sortformer_4spk-v2", 4)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_sortformer_missing_file_is_model_not_found(tmp_path):
    pytest.importorskip("nemo.collections.asr")
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_diarizer("sortformer", "cpu", str(tmp_path / "nope.nemo"), 4)


def test_sortformer_without_nemo_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nemo.collections.asr.models", None)  # as if NeMo were not installed
    with pytest.raises(ModelNotFound, match=r"whisperlivekit\[diarization\]"):
        load_diarizer("sortformer", "cpu", "whatever.nemo", 4)


# -- GPU -------------------------------------------------------------------------------
@pytest.mark.gpu
def test_sortformer_state_and_weights_live_on_cuda0(tiny_nemo, call_audio):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    diarizer = load_diarizer("sortformer", "cuda:0", str(tiny_nemo), 4)
    state = diarizer.new_stream()
    _stream(diarizer, state, call_audio)

    assert {str(p.device) for p in diarizer._model.parameters()} == {"cuda:0"}
    for name in ("spkcache", "fifo", "mean_sil_emb", "n_sil_frames"):
        assert str(getattr(state.nemo, name).device) == "cuda:0", name
    assert state.processed_s > 10.0
    _valid(state.segments, state.processed_s, 4)
    diarizer.close()


@pytest.mark.gpu
def test_embedding_diarizer_runs_on_cuda0():
    onnxruntime = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("no onnxruntime CUDA provider")
    diarizer = load_diarizer("embedding", "cuda:0", None, 4)
    assert diarizer.encoder._session.get_providers()[0] == "CUDAExecutionProvider"
    audio, reference = _conversation(_voice_pair("harvard"))
    state = diarizer.new_stream()
    _stream(diarizer, state, audio)
    assert _best_accuracy(reference, _labels(state.segments, len(reference))) >= 0.90


# -- assigning words to speakers -------------------------------------------------------
def _w(start: float, end: float, text: str = "w") -> Word:
    return Word(start, end, text)


def test_word_takes_the_speaker_it_overlaps_most():
    segments = [SpeakerSegment(0.0, 1.0, 1), SpeakerSegment(1.0, 3.0, 2)]
    assert assign_speakers([_w(0.2, 0.5), _w(0.8, 1.5), _w(0.9, 1.05), _w(2.0, 2.5)], segments) == [1, 2, 1, 2]


def test_overlap_of_one_speaker_adds_up_across_segments():
    segments = [SpeakerSegment(0.0, 0.3, 1), SpeakerSegment(0.3, 0.7, 2), SpeakerSegment(0.7, 1.0, 1)]
    assert assign_speakers([_w(0.0, 1.0)], segments) == [1]


def test_word_outside_every_segment_takes_the_nearest():
    segments = [SpeakerSegment(0.0, 1.0, 1), SpeakerSegment(2.0, 3.0, 2)]
    assert assign_speakers([_w(1.1, 1.3), _w(1.7, 1.9), _w(5.0, 5.5)], segments) == [1, 2, 2]


def test_zero_length_word_inside_a_segment():
    assert assign_speakers([_w(1.5, 1.5)], [SpeakerSegment(0, 1, 1), SpeakerSegment(1, 2, 3)]) == [3]


def test_no_segments_yet_means_speaker_zero():
    assert assign_speakers([_w(0, 1), _w(1, 2)], []) == [0, 0]
    assert assign_speakers([], [SpeakerSegment(0, 1, 1)]) == []


def test_overlapped_speech_goes_to_the_longer_overlap():
    segments = [SpeakerSegment(0.0, 2.0, 1), SpeakerSegment(1.2, 3.0, 2)]
    assert assign_speakers([_w(1.0, 1.5), _w(1.4, 2.2)], segments) == [1, 2]


# -- the registry ----------------------------------------------------------------------
def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="embedding, sortformer"):
        load_diarizer("pyannote", "cpu", None, 4)


def test_auto_takes_sortformer_on_gpus_only_where_nemo_is_installed():
    assert choose_backend("auto", "cuda:1", None, nemo_installed=True) == "sortformer"
    # the default install on a GPU host: no NeMo, so the shipped CAM++ diarizer rather than a failed start
    assert choose_backend("auto", "cuda:1", None, nemo_installed=False) == "embedding"
    assert choose_backend("auto", "cpu", None, nemo_installed=True) == "embedding"
    assert choose_backend("auto", "cpu", "/models/diar.nemo", nemo_installed=True) == "sortformer"
    assert choose_backend("auto", "cuda:0", "/models/encoder.onnx", nemo_installed=True) == "embedding"
    assert choose_backend("sortformer", "cpu", None, nemo_installed=False) == "sortformer"  # asked for: its own error


def test_the_embedding_diarizer_of_a_gpu_runs_on_the_cpu_without_onnxruntime_gpu():
    assert diarizer_device("embedding", "cuda:2", onnx_cuda=False) == "cpu"
    assert diarizer_device("embedding", "cuda:2", onnx_cuda=True) == "cuda:2"
    assert diarizer_device("sortformer", "cuda:2", onnx_cuda=False) == "cuda:2"
    assert diarizer_device("embedding", "cpu", onnx_cuda=False) == "cpu"


# -- the embedding diarizer's clustering and long sessions ---------------------------------
def test_average_linkage_finds_separate_groups_and_respects_max_clusters():
    from whisperlivekit.diarization.embedding import average_linkage

    rng = np.random.default_rng(1)
    centres = np.eye(8)[:3]
    points = np.concatenate([c + rng.normal(0, 0.05, (5, 8)) for c in centres])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = average_linkage(points, threshold=0.5, max_clusters=4)
    assert len(set(labels)) == 3
    assert all(len(set(labels[i * 5 : i * 5 + 5])) == 1 for i in range(3))
    assert len(set(average_linkage(points, threshold=0.5, max_clusters=2))) == 2


@pytest.mark.slow
def test_a_looped_call_keeps_state_bounded_and_settled_labels_final():
    from tests.audio_assets import pyannote_sample

    try:
        call = read_wav(pyannote_sample()[0])
    except AssetUnavailable as exc:
        pytest.skip(f"test audio unavailable: {exc}")
    diarizer = load_diarizer("embedding", "cpu", None, 4, history=16)
    state = diarizer.new_stream()
    settled: Dict[Tuple[float, int], SpeakerSegment] = {}
    audio = np.tile(call, 3)  # 90 s
    for i in range(0, len(audio), SR // 2):
        diarizer.process(state, audio[i : i + SR // 2])
        for s in state.segments:
            if s.end <= state.processed_s:
                settled[(s.start, s.speaker)] = s
        assert len(state.audio) < 5 * SR, "the audio buffer holds only what is not settled yet"
        assert len(state.history) <= 16
        assert state.processed_s >= (i + SR // 2) / SR - 4.0
    final = {(s.start, s.speaker): s for s in state.segments}
    assert all(final[key] == s for key, s in settled.items()), "a settled segment changed"
    _valid(state.segments, state.processed_s, 4)
    assert 2 <= len({s.speaker for s in state.segments}) <= 4
    diarizer.close()
