"""Speaker diarization from a pretrained speaker encoder (CAM++ on ONNX Runtime): the CPU default.

A stream is diarized in four incremental steps:

1. Speech runs: 20 ms frames are voiced when their energy stands `margin_db`
   above a noise floor that follows the quietest recent frames. A run of speech
   ends after `pause_s` without voice; its audio is contiguous (short pauses
   inside a run stay in).
2. Windows inside a run, never across a pause: `window_s` long every `hop_s`,
   plus one window aligned to the run's end; a run shorter than `window_s` is one
   window (at least `min_window_s`). Each window is embedded once (cost: about
   twice the speech time through the encoder).
3. Online clustering, in order: a window joins the speaker whose centroid is the
   most similar if the cosine similarity reaches `threshold`. Otherwise a speaker
   given fewer than `young_windows` windows so far takes it if at least
   `young_threshold` similar (its centroid is still a rough guess: without this,
   a voice first heard in a fast exchange gets a second label when it speaks
   alone). Otherwise the window opens a new speaker at once if it is clearly
   unlike all of them (below `new_below`), or if the next window agrees with it
   and also matches nobody (a window across a speaker change or over two people
   talking at once is not a new voice); failing that it takes the nearest speaker
   if at least `floor` similar, and stays unlabelled if not (overlapped speech,
   noise). Short windows never open speakers.
4. Re-clustering: every `recluster_every_s` of audio, the recent embeddings
   (at most `history` windows) are clustered again from scratch (average
   linkage, cosine); the clusters are matched to the existing labels by their
   overlap with the labels already given, and the centroids are rebuilt from
   them; a cluster of at least `min_new_cluster` windows that matches no label
   becomes a new speaker (a voice the online pass had folded into another),
   and two speakers whose centroids come to match (`merge_threshold`) are
   merged: the newer one is retired and the windows to come go to the older;
   a speaker none of whose recent windows form a cluster of their own (a mix
   of voices, e.g. fast turns at the start of a call) is retired too. Labels already given never change (`relabels` counts how many windows
   the re-clustering would have labelled differently); the better centroids
   serve the windows to come.

Each voiced frame of a run takes the label of the nearest window centre of that
run. Labels become final one window behind the audio (1.1 to 1.9 s with the
defaults); at the end of a stream about 2 s of silence settles the last ones.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import List, Optional, Set

import numpy as np

from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.diarization.speaker_encoder import MIN_SAMPLES, SpeakerEncoder
from whisperlivekit.diarization.types import DiarizationState, SpeakerSegment
from whisperlivekit.errors import device_faults

logger = logging.getLogger(__name__)

FRAME = 320  # 20 ms at 16 kHz
FRAME_S = FRAME / SAMPLE_RATE


@dataclass
class _Window:
    run: int  # index of the speech run
    start: int  # frames
    end: int
    embedding: np.ndarray
    short: bool  # shorter than window_s: never opens a speaker, never moves a centroid
    label: int = 0
    disputed: bool = False  # a re-clustering put it with another speaker (counted once in `relabels`)

    @property
    def center(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class EmbeddingStreamState(DiarizationState):
    received: int = 0  # samples fed so far
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    audio_start: int = 0  # sample index of audio[0]
    voiced: List[bool] = field(default_factory=list, repr=False)  # per frame, from frame_start
    frame_start: int = 0
    noise_db: float = -60.0
    scanned: int = 0  # frames examined for speech runs
    run_start: Optional[int] = None  # first frame of the open run
    last_voiced: int = -1  # last voiced frame of the open run
    run_index: int = 0
    next_window: int = 0  # start frame of the next window in the open run
    waiting: List[_Window] = field(default_factory=list, repr=False)  # embedded, not yet labelled
    settled: List[_Window] = field(default_factory=list, repr=False)  # labelled, frames not yet marked
    closed_runs: List[tuple] = field(default_factory=list, repr=False)  # (run, end frame) of ended runs
    marked_to: int = 0  # frames before this are final
    centroids: List[np.ndarray] = field(default_factory=list, repr=False)  # unit vectors, label - 1
    sums: List[np.ndarray] = field(default_factory=list, repr=False)  # sums of their members' embeddings
    counts: List[int] = field(default_factory=list, repr=False)  # full windows each speaker was given
    history: List[_Window] = field(default_factory=list, repr=False)  # recent full windows, labelled
    next_recluster: int = 0  # frame
    retired: Set[int] = field(default_factory=set, repr=False)  # labels merged into an older one
    relabels: int = 0  # windows some re-clustering labelled differently from the label they were given
    windows_embedded: int = 0

    @property
    def speakers(self) -> int:
        return len(self.centroids)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def average_linkage(embeddings: np.ndarray, threshold: float, max_clusters: int) -> np.ndarray:
    """Cluster ids (0..k-1) from agglomerative average-linkage clustering on cosine similarity.

    Merges the most similar pair of clusters while their average similarity is
    at least `threshold`, and goes on merging past it while more than
    `max_clusters` clusters remain.
    """
    n = len(embeddings)
    members = [[i] for i in range(n)]
    sums = embeddings @ embeddings.T  # pairwise similarity sums between clusters
    active = np.ones(n, dtype=bool)
    sizes = np.ones(n)
    while active.sum() > 1:
        average = sums / np.outer(sizes, sizes)
        average[~active, :] = -np.inf
        average[:, ~active] = -np.inf
        np.fill_diagonal(average, -np.inf)
        i, j = np.unravel_index(int(np.argmax(average)), average.shape)
        if average[i, j] < threshold and active.sum() <= max_clusters:
            break
        sums[i, :] += sums[j, :]
        sums[:, i] += sums[:, j]
        sizes[i] += sizes[j]
        members[i] += members[j]
        active[j] = False
    labels = np.zeros(n, dtype=int)
    for cluster, index in enumerate(np.flatnonzero(active)):
        labels[members[index]] = cluster
    return labels


class EmbeddingDiarizer:
    """Speech-run windows, CAM++ embeddings, online clustering with periodic re-clustering; all state per stream."""

    name = "embedding"

    def __init__(
        self,
        device: str = "cpu",
        max_speakers: int = 4,
        threshold: float = 0.5,
        floor: float = 0.2,
        new_below: float = 0.25,
        window_s: float = 1.5,
        hop_s: float = 0.75,
        min_window_s: float = 0.5,
        pause_s: float = 0.3,
        confirm_wait_s: float = 1.0,
        recluster_every_s: float = 5.0,
        min_new_cluster: int = 3,
        merge_threshold: float = 0.8,
        young_windows: int = 3,
        young_threshold: float = 0.35,
        recluster_threshold: float = 0.4,
        history: int = 240,
        margin_db: float = 12.0,
        floor_dbfs: float = -55.0,
        hangover_s: float = 0.1,
        weights_path: Optional[str] = None,
    ) -> None:
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        self.encoder = SpeakerEncoder(device=device, weights_path=weights_path)
        self.device = device
        self.max_speakers = max_speakers
        self.threshold = threshold
        self.floor = floor
        self.new_below = new_below
        self.window = max(1, round(window_s / FRAME_S))
        self.hop = max(1, round(hop_s / FRAME_S))
        self.min_window = max(MIN_SAMPLES // FRAME, round(min_window_s / FRAME_S))
        self.pause = max(1, round(pause_s / FRAME_S))
        self.confirm_wait = round(confirm_wait_s / FRAME_S)
        self.recluster_every = round(recluster_every_s / FRAME_S)
        self.recluster_threshold = recluster_threshold
        self.min_new_cluster = min_new_cluster
        self.merge_threshold = merge_threshold
        self.young_windows = young_windows
        self.young_threshold = young_threshold
        self.history = history
        self.margin_db = margin_db
        self.floor_dbfs = floor_dbfs
        self.hangover = round(hangover_s / FRAME_S)
        # Worst case from audio to final label: a window's start waits for the window after it, and a
        # would-be new speaker for confirmation; at the end, the pause that closes the run.
        self.latency_s = max(self.window + self.hop, self.pause + self.confirm_wait) * FRAME_S + 0.2
        self.encoder.embed(np.random.default_rng(0).normal(0, 0.05, self.window * FRAME).astype(np.float32))

    def new_stream(self) -> EmbeddingStreamState:
        return EmbeddingStreamState()

    # -- 1. voice and runs -----------------------------------------------------------
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

    def _clip(self, state: EmbeddingStreamState, start: int, end: int) -> np.ndarray:
        offset = start * FRAME - state.audio_start
        return state.audio[offset : offset + (end - start) * FRAME]

    def _window(self, state: EmbeddingStreamState, start: int, end: int, short: bool) -> None:
        with device_faults(self.device, "diarization"):
            embedding = self.encoder.embed(self._clip(state, start, end))
        state.windows_embedded += 1
        state.waiting.append(_Window(state.run_index, start, end, embedding, short))

    def _scan(self, state: EmbeddingStreamState) -> None:
        """Find speech runs in the new frames and cut their windows."""
        available = state.frame_start + len(state.voiced)
        while state.scanned < available:
            frame = state.scanned
            voiced = state.voiced[frame - state.frame_start]
            if state.run_start is None:
                if voiced:
                    state.run_start = max(frame - self.hangover, state.marked_to, state.frame_start)
                    state.last_voiced = frame
                    state.next_window = state.run_start
            elif voiced:
                state.last_voiced = frame
            state.scanned += 1
            if state.run_start is None:
                continue
            if state.scanned - state.next_window >= self.window and state.last_voiced >= state.scanned - self.pause:
                self._window(state, state.next_window, state.next_window + self.window, short=False)
                state.next_window += self.hop
            if state.scanned - 1 - state.last_voiced >= self.pause:
                self._close_run(state, min(state.last_voiced + 1 + self.hangover, state.scanned))

    def _close_run(self, state: EmbeddingStreamState, end: int) -> None:
        start = state.run_start
        assert start is not None
        covered = state.next_window - self.hop + self.window if state.next_window > start else start
        if end - start >= self.window:
            if end - covered >= self.hop // 2:
                self._window(state, end - self.window, end, short=False)
        elif end - start >= self.min_window:
            self._window(state, start, end, short=True)
        state.closed_runs.append((state.run_index, end))
        state.run_index += 1
        state.run_start = None

    # -- 2. labels -------------------------------------------------------------------
    def _similarities(self, state: EmbeddingStreamState, embedding: np.ndarray) -> np.ndarray:
        if not state.centroids:
            return np.zeros(0)
        sims = np.stack(state.centroids) @ embedding
        for label in state.retired:
            sims[label - 1] = -1.0
        return sims

    def _merge_alike(self, state: EmbeddingStreamState) -> None:
        """Retire a speaker whose centroid has come to match an older one's: one voice split in two.

        Labels already given stay; the windows to come go to the older speaker.
        """
        live = [l for l in range(1, len(state.centroids) + 1) if l not in state.retired]
        for older, newer in itertools.combinations(live, 2):
            if float(state.centroids[older - 1] @ state.centroids[newer - 1]) >= self.merge_threshold:
                state.sums[older - 1] = state.sums[older - 1] + state.sums[newer - 1]
                state.centroids[older - 1] = _unit(state.sums[older - 1])
                state.retired.add(newer)
                for window in state.history:
                    if window.label == newer:
                        window.label = older
                logger.debug("speaker %d merged into %d", newer, older)
                return

    def _new_speaker(self, state: EmbeddingStreamState, embedding: np.ndarray) -> int:
        state.centroids.append(_unit(embedding))
        state.sums.append(embedding.copy())
        state.counts.append(0)
        logger.debug("new speaker %d", len(state.centroids))
        return len(state.centroids)

    def _decide(self, state: EmbeddingStreamState, window: _Window, following: Optional[_Window]) -> int:
        sims = self._similarities(state, window.embedding)
        best = int(np.argmax(sims)) if len(sims) else -1
        if best >= 0 and sims[best] >= self.threshold:
            return best + 1
        young = [l for l in range(len(sims)) if state.counts[l] < self.young_windows and sims[l] >= self.young_threshold]
        if young:  # a speaker seen in only a window or two is still a rough guess: let it grow first
            return max(young, key=lambda l: sims[l]) + 1
        if not window.short and len(state.centroids) < self.max_speakers:
            if best < 0 or sims[best] < self.new_below:
                return self._new_speaker(state, window.embedding)
            if following is not None and not following.short:
                agrees = float(window.embedding @ following.embedding) >= self.threshold
                if agrees and self._similarities(state, following.embedding).max() < self.threshold:
                    return self._new_speaker(state, _unit(window.embedding + following.embedding))
        if best >= 0 and sims[best] >= self.floor:
            return best + 1
        return 0

    def _needs_next(self, state: EmbeddingStreamState, window: _Window) -> bool:
        """Whether this window's label depends on the one after it (it could open a speaker)."""
        sims = self._similarities(state, window.embedding)
        return (
            len(sims) > 0
            and self.new_below <= sims.max() < self.threshold
            and not window.short
            and len(state.centroids) < self.max_speakers
        )

    def _settle(self, state: EmbeddingStreamState) -> None:
        while state.waiting:
            window = state.waiting[0]
            following = state.waiting[1] if len(state.waiting) > 1 else None
            if following is None and self._needs_next(state, window) and state.scanned < window.end + self.confirm_wait:
                return
            window.label = self._decide(state, window, following)
            state.waiting.pop(0)
            if window.label and not window.short:
                state.counts[window.label - 1] += 1
                if float(state.centroids[window.label - 1] @ window.embedding) >= self.threshold:
                    state.sums[window.label - 1] += window.embedding
                    state.centroids[window.label - 1] = _unit(state.sums[window.label - 1])
                    self._merge_alike(state)
                state.history.append(window)
                del state.history[: max(0, len(state.history) - self.history)]
            state.settled.append(window)
            if state.scanned >= state.next_recluster:
                self._recluster(state)
                state.next_recluster = state.scanned + self.recluster_every

    def _recluster(self, state: EmbeddingStreamState) -> None:
        """Cluster the recent windows again; match the clusters to labels; rebuild the centroids."""
        if len(state.history) < 4 or len(state.centroids) < 1:
            return
        embeddings = np.stack([w.embedding for w in state.history])
        given = np.array([w.label for w in state.history])
        clusters = average_linkage(embeddings, self.recluster_threshold, self.max_speakers)
        count = int(clusters.max()) + 1
        labels = [l for l in range(1, len(state.centroids) + 1) if l not in state.retired]
        overlap = np.array([[np.sum((clusters == c) & (given == l)) for l in labels] for c in range(count)])
        best_total, best_mapping = -1, {}
        for chosen in itertools.permutations(range(len(labels)), min(count, len(labels))):
            for clusters_order in itertools.permutations(range(count), len(chosen)):
                total = sum(overlap[c, l] for c, l in zip(clusters_order, chosen))
                if total > best_total:
                    best_total, best_mapping = total, {c: labels[l] for c, l in zip(clusters_order, chosen)}
        for cluster in range(count):  # a voice the online pass folded into another one
            members = int(np.sum(clusters == cluster))
            if cluster not in best_mapping and members >= self.min_new_cluster and len(state.centroids) < self.max_speakers:
                best_mapping[cluster] = self._new_speaker(state, _unit(embeddings[clusters == cluster].sum(axis=0)))
        for label in labels:  # its windows all went to other voices' clusters: it was a mix, not a voice
            if label not in best_mapping.values() and np.any(given == label):
                state.retired.add(label)
        mapped = np.array([best_mapping.get(int(c), 0) for c in clusters])
        for window, label in zip(state.history, mapped):
            if label and label != window.label and not window.disputed:
                window.disputed = True
                state.relabels += 1
        for cluster, label in best_mapping.items():
            members = embeddings[clusters == cluster]
            if len(members) >= 2:
                state.sums[label - 1] = members.sum(axis=0)
                state.centroids[label - 1] = _unit(state.sums[label - 1])
        self._merge_alike(state)

    # -- 3. frames -------------------------------------------------------------------
    def _frame_voiced(self, state: EmbeddingStreamState, frame: int) -> bool:
        lo = max(frame - self.hangover, state.frame_start)
        hi = min(frame + self.hangover + 1, state.frame_start + len(state.voiced))
        return any(state.voiced[lo - state.frame_start : hi - state.frame_start])

    def _mark(self, state: EmbeddingStreamState, label: int, start: int, end: int) -> None:
        if not label or end <= start:
            return
        run_start = None
        for frame in range(start, end):
            if self._frame_voiced(state, frame):
                if run_start is None:
                    run_start = frame
            elif run_start is not None:
                state.mark(label, round(run_start * FRAME_S, 6), round(frame * FRAME_S, 6))
                run_start = None
        if run_start is not None:
            state.mark(label, round(run_start * FRAME_S, 6), round(end * FRAME_S, 6))

    def _label_frames(self, state: EmbeddingStreamState) -> None:
        """Mark the frames whose nearest window centre is settled; advance `processed_s`."""
        while state.settled:
            window = state.settled[0]
            start = max(state.marked_to, window.start)
            # The next window of this run, settled or not: its centre fixes the boundary between the two.
            after = state.settled[1] if len(state.settled) > 1 else (state.waiting[0] if state.waiting else None)
            if after is not None and after.run == window.run:
                boundary = int((window.center + after.center) // 2)
                self._mark(state, window.label, start, boundary)
                state.marked_to = max(state.marked_to, boundary)
                state.settled.pop(0)
                continue
            closed = [end for run, end in state.closed_runs if run == window.run]
            if not closed:
                # The run goes on: the next window, one hop on, takes the frames past the midpoint, so
                # those before it are this window's already. Marking them now, not when the next
                # window settles, cuts the label delay by a hop (p50 1.59 -> see docs/diarization.md).
                # (A run's last window is aligned to its end, nearer than a hop; the few frames
                # between the two midpoints keep this window's label.)
                boundary = min(int(window.center + self.hop / 2), state.scanned)
                if boundary > start:
                    self._mark(state, window.label, start, boundary)
                    state.marked_to = boundary
                break
            self._mark(state, window.label, start, closed[0])
            state.marked_to = max(state.marked_to, closed[0])
            state.settled.pop(0)
        state.closed_runs = [(run, end) for run, end in state.closed_runs
                             if any(w.run == run for w in state.settled + state.waiting) or run == state.run_index]
        pending = [w.start for w in state.settled + state.waiting]
        if state.run_start is not None:
            pending.append(state.run_start)
        final = min(pending) if pending else state.scanned - self.hangover
        state.marked_to = max(state.marked_to, min(final, state.scanned))
        state.processed_s = round(max(state.processed_s, state.marked_to * FRAME_S), 6)

    def _trim(self, state: EmbeddingStreamState) -> None:
        """Drop voice flags no frame label needs and audio no window to come needs (both bounded in a long run)."""
        keep = min([state.marked_to - self.hangover, state.scanned - self.hangover]
                   + [w.start for w in state.settled + state.waiting]
                   + ([state.run_start] if state.run_start is not None else []))
        drop = keep - state.frame_start
        if drop > 0:
            del state.voiced[:drop]
            state.frame_start = keep
        keep_audio = state.scanned - self.hangover  # a run that starts now reaches back by the hangover
        if state.run_start is not None:  # later windows of the open run start at next_window, its tail after next_window - hop
            keep_audio = state.next_window - self.hop if state.next_window > state.run_start else state.run_start
        drop_samples = max(keep_audio, 0) * FRAME - state.audio_start
        if drop_samples > 0:
            state.audio = state.audio[drop_samples:]
            state.audio_start += drop_samples

    # -- the model interface -----------------------------------------------------------
    def process(self, state: EmbeddingStreamState, audio: np.ndarray) -> List[SpeakerSegment]:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio):
            state.audio = np.concatenate([state.audio, audio])
            state.received += len(audio)
            self._measure_frames(state)
            self._scan(state)
            self._settle(state)
            self._label_frames(state)
            self._trim(state)
        return state.take_changes()

    def close(self) -> None:
        self.encoder.close()
