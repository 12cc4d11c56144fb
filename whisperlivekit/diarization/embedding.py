"""Speaker diarization from a pretrained speaker encoder: the CPU default.

The encoder is Resemblyzer's (a 3-layer LSTM over 40 mel bands, 256-dim
embeddings; its weights ship inside the PyPI package). A stream is diarized in
three steps, all incremental:

1. Voice: 20 ms frames are voiced when their energy stands `margin_db` above a
   noise floor that follows the quietest recent frames.
2. Windows: every `hop_s` a `window_s` window ends; its voiced audio (at least
   `min_voiced_s` of it) is levelled and embedded. Windows with less voice are
   skipped and leave a gap in the labels.
3. Clustering, one window behind the audio: a window joins the speaker whose
   centroid is the most similar (cosine) if the similarity reaches `threshold`.
   A window below the threshold for every known speaker opens a new speaker only
   if the next window agrees with it and also matches nobody known (one odd
   window, e.g. across a speaker change, is given to the nearest speaker
   instead), and only while fewer than `max_speakers` exist. A window whose
   label differs from both of its neighbours, which agree, takes theirs.

Each voiced frame finally gets the label of the nearest embedded window. Labels
become final `window_s / 2 + hop_s` to `window_s / 2 + 2 * hop_s` behind the
audio (1.3 to 1.8 s by default); at the end of a stream, about 2 s of silence
(zeros) settles the last ones.

Limits: the encoder separates clearly different voices (a man and a woman:
all windows right) but not similar voices over a narrow-band phone line, where
windows of two people are as alike as two sentences of one person; no single
`threshold` serves both. On such audio set `max_speakers` to the known number
of speakers.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.diarization.types import DiarizationState, SpeakerSegment
from whisperlivekit.errors import DeviceError, ModelLoadError, ModelNotFound, device_faults

logger = logging.getLogger(__name__)

FRAME = 320  # 20 ms at 16 kHz
FRAME_S = FRAME / SAMPLE_RATE
LEVEL_DBFS = -30.0  # Resemblyzer's training level
INSTALL_HINT = "pip install 'setuptools<81' resemblyzer"


@dataclass
class _Window:
    center_s: float
    embedding: Optional[np.ndarray]  # None: too little voice to embed


@dataclass
class EmbeddingStreamState(DiarizationState):
    received: int = 0  # samples fed so far
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    audio_start: int = 0  # sample index of audio[0]
    voiced: List[bool] = field(default_factory=list, repr=False)  # per 20 ms frame, from frame_start
    frame_start: int = 0
    noise_db: float = -60.0
    next_window: int = 0
    centroids: List[np.ndarray] = field(default_factory=list, repr=False)  # sums of unit embeddings
    pending: Optional[_Window] = None  # voiced window waiting for its successor
    last_label: int = 0  # label of the window just before `pending` (0: none or unvoiced)
    final: List[tuple] = field(default_factory=list, repr=False)  # (center_s, label or 0), recent windows
    next_frame: int = 0  # first frame not yet labelled

    @property
    def speakers(self) -> int:
        return len(self.centroids)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


class EmbeddingDiarizer:
    """Windowed speaker embeddings + online clustering; shared, all state per stream."""

    name = "embedding"

    def __init__(
        self,
        device: str = "cpu",
        max_speakers: int = 4,
        threshold: float = 0.7,
        window_s: float = 1.6,
        hop_s: float = 0.5,
        min_voiced_s: float = 0.4,
        margin_db: float = 12.0,
        floor_dbfs: float = -55.0,
        hangover_s: float = 0.16,
        weights_path: Optional[str] = None,
    ) -> None:
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        try:
            with warnings.catch_warnings():  # webrtcvad, imported by resemblyzer, warns about pkg_resources
                warnings.simplefilter("ignore")
                import torch
                from resemblyzer import VoiceEncoder
                from resemblyzer.audio import wav_to_mel_spectrogram
        except ImportError as exc:
            raise ModelNotFound(
                f"The embedding diarizer needs the Resemblyzer speaker encoder ({exc}): {INSTALL_HINT}"
            ) from exc
        try:
            with device_faults(device, "loading Resemblyzer"):
                self._encoder = VoiceEncoder(device=device, verbose=False, weights_fpath=weights_path).eval()
        except DeviceError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"Could not load the Resemblyzer speaker encoder on {device}: {exc}") from exc
        self._torch = torch
        self._mel = wav_to_mel_spectrogram
        self.device = device
        self.max_speakers = max_speakers
        self.threshold = threshold
        self.window = max(1, round(window_s / FRAME_S)) * FRAME
        self.hop = max(1, round(hop_s / FRAME_S)) * FRAME
        self.min_voiced_frames = int(round(min_voiced_s / FRAME_S))
        self.margin_db = margin_db
        self.floor_dbfs = floor_dbfs
        self.hangover_frames = int(round(hangover_s / FRAME_S))
        self.latency_s = (self.window / 2 + 2 * self.hop) / SAMPLE_RATE  # worst case, see the module docstring
        # The first embedding pays for librosa's lazy imports and torch's kernel set-up (seconds):
        # pay it here, at load time, not in the first connection's first chunk.
        self._embed([np.random.default_rng(0).normal(0, 0.05, self.window).astype(np.float32)])

    def new_stream(self) -> EmbeddingStreamState:
        return EmbeddingStreamState()

    # -- 1. voice ------------------------------------------------------------------
    def _measure_frames(self, state: EmbeddingStreamState) -> None:
        have = state.frame_start + len(state.voiced)
        complete = state.received // FRAME
        if complete <= have:
            return
        first = have * FRAME - state.audio_start
        frames = state.audio[first : first + (complete - have) * FRAME].reshape(-1, FRAME)
        levels = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
        for level in levels:
            # The floor drops at once to a quieter frame and creeps up by 1 dB per second.
            state.noise_db = min(float(level), state.noise_db + 1.0 * FRAME_S)
            state.voiced.append(level > max(state.noise_db + self.margin_db, self.floor_dbfs))

    def _frame_voiced(self, state: EmbeddingStreamState, frame: int) -> bool:
        """Voiced, or within the hangover of a voiced frame (on both sides)."""
        lo = max(frame - self.hangover_frames, state.frame_start)
        hi = min(frame + self.hangover_frames + 1, state.frame_start + len(state.voiced))
        return any(state.voiced[lo - state.frame_start : hi - state.frame_start])

    # -- 2. windows ----------------------------------------------------------------
    def _cut_windows(self, state: EmbeddingStreamState) -> List[tuple]:
        """(center_s, voiced audio or None) for each window that is complete."""
        windows = []
        while state.next_window + self.window <= state.frame_start * FRAME + len(state.voiced) * FRAME:
            start = state.next_window
            first = start // FRAME - state.frame_start
            flags = state.voiced[first : first + self.window // FRAME]
            audio = None
            if sum(flags) >= self.min_voiced_frames:
                offset = start - state.audio_start
                frames = state.audio[offset : offset + len(flags) * FRAME].reshape(-1, FRAME)
                audio = frames[np.asarray(flags, dtype=bool)].reshape(-1)
            windows.append(((start + self.window / 2) / SAMPLE_RATE, audio))
            state.next_window += self.hop
        return windows

    def _embed(self, clips: List[np.ndarray]) -> np.ndarray:
        """Unit embeddings of voiced clips, one batched LSTM pass."""
        torch = self._torch
        mels = []
        for clip in clips:
            rms = float(np.sqrt(np.mean(clip.astype(np.float64) ** 2)))
            gain = 10.0 ** (LEVEL_DBFS / 20.0) / max(rms, 1e-6)
            mels.append(torch.from_numpy(self._mel((clip * gain).astype(np.float32))))
        lengths = torch.tensor([len(m) for m in mels])
        padded = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True).to(self._encoder.device)
        packed = torch.nn.utils.rnn.pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        with torch.inference_mode():
            _, (hidden, _) = self._encoder.lstm(packed)
            raw = self._encoder.relu(self._encoder.linear(hidden[-1]))
            embeddings = raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-9)
        return embeddings.cpu().numpy()

    # -- 3. clustering -------------------------------------------------------------
    def _similarities(self, state: EmbeddingStreamState, embedding: np.ndarray) -> np.ndarray:
        if not state.centroids:
            return np.zeros(0)
        return np.array([float(_unit(c) @ embedding) for c in state.centroids])

    def _settle(self, state: EmbeddingStreamState, window: _Window, following: Optional[_Window]) -> None:
        """Give `window` its final label, looking at the window after it (None: unvoiced or none)."""
        embedding = window.embedding
        assert embedding is not None
        sims = self._similarities(state, embedding)
        best = int(np.argmax(sims)) if len(sims) else -1
        if best >= 0 and (sims[best] >= self.threshold or len(state.centroids) >= self.max_speakers):
            label, created = best + 1, False
        else:
            confirmed = (
                following is not None
                and float(embedding @ following.embedding) >= self.threshold
                and (best < 0 or self._similarities(state, following.embedding).max() < self.threshold)
            )
            if confirmed:
                label, created = self._new_speaker(state, embedding), True
            elif best >= 0:
                label, created = best + 1, False
            else:  # nobody known yet and this window stands alone: leave it unlabelled
                state.last_label = 0
                state.final.append((window.center_s, 0))
                return
        raw_label = label
        if following is not None and state.last_label and label != state.last_label and not created:
            if int(np.argmax(self._similarities(state, following.embedding))) + 1 == state.last_label:
                label = state.last_label  # a lone window between two of the same speaker
        if label == raw_label and not created and sims[label - 1] >= self.threshold:
            state.centroids[label - 1] = state.centroids[label - 1] + embedding
        state.last_label = label
        state.final.append((window.center_s, label))

    def _new_speaker(self, state: EmbeddingStreamState, embedding: np.ndarray) -> int:
        state.centroids.append(embedding.copy())
        logger.debug("new speaker %d", len(state.centroids))
        return len(state.centroids)

    def _advance(self, state: EmbeddingStreamState, window: _Window) -> None:
        if state.pending is not None:
            self._settle(state, state.pending, window if window.embedding is not None else None)
            state.pending = None
        if window.embedding is not None:
            state.pending = window
        else:
            state.last_label = 0
            state.final.append((window.center_s, 0))

    # -- labels --------------------------------------------------------------------
    def _label_frames(self, state: EmbeddingStreamState) -> None:
        """Label voiced frames up to the centre of the last settled window."""
        if not state.final:
            return
        last_center = state.final[-1][0]
        frame = state.next_frame
        half_window_s = self.window / SAMPLE_RATE / 2
        run_start, run_label = None, 0
        cursor = 0
        while (frame + 0.5) * FRAME_S < last_center:
            t = (frame + 0.5) * FRAME_S
            while cursor + 1 < len(state.final) and state.final[cursor + 1][0] <= t:
                cursor += 1
            candidates = [state.final[cursor]] + ([state.final[cursor + 1]] if cursor + 1 < len(state.final) else [])
            label = 0
            nearest = half_window_s
            for center, lab in candidates:
                if lab and abs(center - t) < nearest:
                    label, nearest = lab, abs(center - t)
            if label and not self._frame_voiced(state, frame):
                label = 0
            if label != run_label:
                if run_label:
                    state.mark(run_label, round(run_start * FRAME_S, 6), round(frame * FRAME_S, 6))
                run_start, run_label = frame, label
            frame += 1
        if run_label:
            state.mark(run_label, round(run_start * FRAME_S, 6), round(frame * FRAME_S, 6))
        state.next_frame = frame
        state.processed_s = round(frame * FRAME_S, 6)
        del state.final[: max(0, cursor - 1)]

    def _trim(self, state: EmbeddingStreamState) -> None:
        keep_frame = min(state.next_window // FRAME, state.next_frame - self.hangover_frames)
        drop = keep_frame - state.frame_start
        if drop > 0:
            del state.voiced[:drop]
            state.frame_start = keep_frame
        drop_samples = state.next_window - state.audio_start
        if drop_samples > 0:
            state.audio = state.audio[drop_samples:]
            state.audio_start += drop_samples

    # -- the model interface -------------------------------------------------------
    def process(self, state: EmbeddingStreamState, audio: np.ndarray) -> List[SpeakerSegment]:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio):
            state.audio = np.concatenate([state.audio, audio])
            state.received += len(audio)
            self._measure_frames(state)
            cut = self._cut_windows(state)
            voiced = [i for i, (_, clip) in enumerate(cut) if clip is not None]
            with device_faults(self.device, "diarization"):
                embeddings = self._embed([cut[i][1] for i in voiced]) if voiced else []
            by_window = dict(zip(voiced, embeddings))
            for i, (center_s, _) in enumerate(cut):
                self._advance(state, _Window(center_s, by_window.get(i)))
            self._label_frames(state)
            self._trim(state)
        return state.take_changes()

    def close(self) -> None:
        self._encoder = None
        if str(self.device).startswith("cuda"):
            self._torch.cuda.empty_cache()
