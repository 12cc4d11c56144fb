"""Silero voice activity detection with per-connection state.

The ONNX model ships inside the `silero-vad` package. One onnxruntime session per
device worker is shared by that worker's connections; the recurrent state and the
64-sample context live in each connection's `VadStream`, so streams never mix (the
package's own wrapper keeps state on the model object, which would). The worker
runs VAD jobs on one lane thread, and the session is also only run under its own
lock, so no two threads ever run it at once whoever calls it. A stream that
was stopped (its connection closed) gives up at the next window instead of running on
after the connection is gone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import List, Tuple

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

    def window_probability(self, stream: "VadStream", window: np.ndarray) -> float:
        x = np.concatenate([stream.context, window])[None, :].astype(np.float32)
        with self._lock:
            out, state = self._session.run(None, {"input": x, "state": stream.state, "sr": self._sr})
        stream.state = state
        stream.context = x[0, -CONTEXT:]
        return float(out[0, 0])


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

    def process(self, model: SileroVadModel, audio: np.ndarray) -> List[Tuple[str, float]]:
        """Feed audio; returns ('start'|'end', time_s) events in order."""
        events: List[Tuple[str, float]] = []
        data = np.concatenate([self.pending, audio])
        n_windows = len(data) // WINDOW
        self.pending = data[n_windows * WINDOW:]
        end_after = max(1, int(self.min_silence_s * SAMPLE_RATE / WINDOW))
        for i in range(n_windows):
            if self.stopped:
                break
            window = data[i * WINDOW:(i + 1) * WINDOW]
            p = model.window_probability(self, window)
            t = self.samples_seen / SAMPLE_RATE
            self.samples_seen += WINDOW
            if p >= self.threshold:
                self.silence_windows = 0
                if not self.in_speech:
                    self.in_speech = self.speech_seen = True
                    events.append(("start", t))
            elif self.in_speech and p < self.threshold - 0.15:
                self.silence_windows += 1
                if self.silence_windows >= end_after:
                    self.in_speech = False
                    self.silence_windows = 0
                    events.append(("end", t - (end_after - 1) * WINDOW / SAMPLE_RATE))
        return events
