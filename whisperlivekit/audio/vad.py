"""Silero voice activity detection with per-connection state.

The ONNX model ships inside the `silero-vad` package. One onnxruntime session per
device worker is shared by that worker's connections; the recurrent state and the
64-sample context live in each connection's `VadStream`, so streams never mix (the
package's own wrapper keeps state on the model object, which would). The worker
runs VAD jobs on one lane thread, and the session is also only run under its own
lock, so no two threads ever run it at once whoever calls it. A stream that
was stopped (its connection closed) gives up at the next window instead of running on
after the connection is gone.

Silero's rows are independent (input `[batch, 576]`, state `[2, batch, 128]`), so `SileroVadModel.process_many` runs the
same window index of many streams as one call: the probabilities are those of one call per stream, and the
fixed cost of a call, most of the CPU a 32 ms window takes, is paid once per round instead of once per stream.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import List, Optional, Sequence, Tuple

import numpy as np
from whisperlivekit.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

WINDOW = 512  # samples at 16 kHz (32 ms), what the model expects
CONTEXT = 64


class SileroVadModel:
    def __init__(self) -> None:
        import onnxruntime

        path = resources.files("silero_vad") / "data" / "silero_vad.onnx"
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._lock = threading.Lock()
        self.calls = 0  # ONNX runs, and the windows they held: windows / calls is the batching achieved
        self.windows = 0

    def window_probabilities(self, streams: Sequence["VadStream"], windows: np.ndarray) -> np.ndarray:
        """One window (row of `windows`) for each of `streams`, which must be distinct, in one call."""
        x = np.empty((len(streams), CONTEXT + WINDOW), dtype=np.float32)
        x[:, CONTEXT:] = windows
        for row, stream in enumerate(streams):
            x[row, :CONTEXT] = stream.context
        # a stream's state may be a view of a batch's (not contiguous): ONNX Runtime is given a contiguous one
        state = np.ascontiguousarray(streams[0].state) if len(streams) == 1 else np.concatenate([s.state for s in streams], axis=1)
        with self._lock:
            out, state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            self.calls += 1
            self.windows += len(streams)
        for row, stream in enumerate(streams):  # views of this call's own arrays: nothing else holds them
            stream.state = state[:, row:row + 1]
            stream.context = x[row, -CONTEXT:]
        return out[:, 0]

    def window_probability(self, stream: "VadStream", window: np.ndarray) -> float:
        return float(self.window_probabilities([stream], window[None, :])[0])

    def process_many(self, jobs: Sequence[Tuple["VadStream", np.ndarray]]) -> List[List[Tuple[str, float]]]:
        """Each (stream, audio) job's events, as `VadStream.process` gives them; the streams must be distinct.

        Round r runs the r-th window of every stream that has one as one call. A stream stopped meanwhile
        takes no further window, as in `process`.
        """
        windows = [stream.take_windows(audio) for stream, audio in jobs]
        events: List[List[Tuple[str, float]]] = [[] for _ in jobs]
        for r in range(max((len(w) for w in windows), default=0)):
            live = [i for i, w in enumerate(windows) if r < len(w) and not jobs[i][0].stopped]
            if not live:
                break
            rows = windows[live[0]][r:r + 1] if len(live) == 1 else np.stack([windows[i][r] for i in live])
            probabilities = self.window_probabilities([jobs[i][0] for i in live], rows)
            for i, p in zip(live, probabilities):
                event = jobs[i][0].observe(float(p))
                if event is not None:
                    events[i].append(event)
        return events


@dataclass
class VadStream:
    """One connection's VAD memory plus a hysteresis segmenter over window probabilities."""

    threshold: float = 0.5
    min_silence_s: float = 0.5
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    samples_seen: int = 0
    in_speech: bool = False
    silence_windows: int = 0
    speech_seen: bool = False
    stopped: bool = False

    def stop(self) -> None:
        """The connection is closing: a `process` call still running returns at its next window."""
        self.stopped = True

    def take_windows(self, audio: np.ndarray) -> np.ndarray:
        """`audio` after what is pending, as whole windows (n, WINDOW); the rest stays pending."""
        data = np.concatenate([self.pending, audio])
        n_windows = len(data) // WINDOW
        self.pending = data[n_windows * WINDOW:]
        return data[: n_windows * WINDOW].reshape(n_windows, WINDOW)

    def observe(self, p: float) -> Optional[Tuple[str, float]]:
        """The next window's speech probability through the hysteresis: the event it causes, if any."""
        end_after = max(1, int(self.min_silence_s * SAMPLE_RATE / WINDOW))
        t = self.samples_seen / SAMPLE_RATE
        self.samples_seen += WINDOW
        if p >= self.threshold:
            self.silence_windows = 0
            if not self.in_speech:
                self.in_speech = self.speech_seen = True
                return ("start", t)
        elif self.in_speech and p < self.threshold - 0.15:
            self.silence_windows += 1
            if self.silence_windows >= end_after:
                self.in_speech = False
                self.silence_windows = 0
                return ("end", t - (end_after - 1) * WINDOW / SAMPLE_RATE)
        return None

    def process(self, model: SileroVadModel, audio: np.ndarray) -> List[Tuple[str, float]]:
        """Feed audio; returns ('start'|'end', time_s) events in order."""
        return model.process_many([(self, audio)])[0]

