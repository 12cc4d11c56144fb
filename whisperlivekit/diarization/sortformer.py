"""NVIDIA streaming Sortformer (NeMo): end-to-end diarization of up to 4 speakers, for GPUs.

Sortformer turns 80 ms frames into per-speaker activity probabilities, speakers
numbered in order of first appearance. Streaming, it reads the audio in chunks
of `chunk_len` frames with `chunk_left_context` / `chunk_right_context` frames
of context, and remembers earlier speakers through two per-stream buffers of
encoder embeddings: a FIFO of the latest `fifo_len` frames and a speaker cache
of `spkcache_len` frames, compressed every `spkcache_update_period` frames.
NeMo keeps these in a `StreamingSortformerState`, so one loaded model serves
any number of streams, each with its own state.

Features are computed here per chunk from the raw audio with a few frames of
margin, so they equal those of the whole recording: a stream fed in 100 ms
pieces gets the same output as NeMo's offline `forward_streaming` on the file.

Latency is (chunk_len + chunk_right_context) x 80 ms plus 30 ms of feature
margin: 1.07 s by default (NVIDIA's "low latency" setting, 6 + 7 frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np

from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.diarization.types import DiarizationState, SpeakerSegment
from whisperlivekit.errors import DeviceError, ModelLoadError, ModelNotFound, device_faults
from whisperlivekit.weights.hub import hub_has

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "nvidia/diar_streaming_sortformer_4spk-v2"
INSTALL_HINT = "pip install 'whisperlivekit[diarization]'  (NeMo: nemo_toolkit[asr])"
HUB_HOST = "huggingface.co"
MARGIN_FRAMES = 3  # feature frames of extra audio on each side: STFT window and pre-emphasis reach


@dataclass
class SortformerStreamState(DiarizationState):
    nemo: Any = field(default=None, repr=False)  # NeMo's StreamingSortformerState: speaker cache, FIFO, ...
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    audio_start: int = 0  # sample index of audio[0]
    received: int = 0  # samples fed so far
    next_feature: int = 0  # feature frame (10 ms) where the next chunk starts
    device: str = "cpu"


def _import_sortformer():
    try:
        from nemo.collections.asr.models import SortformerEncLabelModel
    except ImportError as exc:
        raise ModelNotFound(
            f"The sortformer diarization backend needs NVIDIA NeMo, which is not installed ({exc}). "
            f"Install it with: {INSTALL_HINT}, or use --diarization-backend embedding."
        ) from exc
    return SortformerEncLabelModel


def _load(model: str, device: str):
    """A SortformerEncLabelModel from a local .nemo file, the Hugging Face cache, or (online) the hub."""
    import torch

    cls = _import_sortformer()
    location = torch.device(device)
    path = Path(model).expanduser()
    if path.is_file():
        source = str(path)
    elif model.endswith(".nemo") or path.is_absolute() or model.startswith("."):
        raise ModelNotFound(f"Sortformer model file {model} does not exist.")
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id=model, filename=f"{model.rsplit('/', 1)[-1]}.nemo")
        if isinstance(cached, str) and Path(cached).is_file():
            source = cached
        elif hub_has(model):
            logger.info("downloading %s from the Hugging Face hub", model)
            try:
                return cls.from_pretrained(model, map_location=location)
            except Exception as exc:
                raise ModelNotFound(f"Could not fetch Sortformer model '{model}' from the hub: {exc}") from exc
        else:
            raise ModelNotFound(
                f"Sortformer model '{model}' is not in the local Hugging Face cache and {HUB_HOST} cannot be "
                "reached (or is off: HF_HUB_OFFLINE). Download the .nemo file on a machine with access (it is on "
                f"https://{HUB_HOST}/{model}) and pass its path as the diarization model."
            )
    try:
        with device_faults(device, "loading Sortformer"):
            return cls.restore_from(source, map_location=location)
    except DeviceError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Could not load Sortformer model from {source} on {device}: {exc}") from exc


class SortformerDiarizer:
    """Streaming Sortformer on one device; shared, all streaming state per stream."""

    name = "sortformer"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "cpu",
        max_speakers: int = 4,
        chunk_len: int = 6,
        chunk_left_context: int = 1,
        chunk_right_context: int = 7,
        fifo_len: int = 188,
        spkcache_len: int = 188,
        spkcache_update_period: int = 144,
        threshold: float = 0.5,
    ) -> None:
        import torch

        self._torch = torch
        self._model = _load(model, device)
        self._model.eval()
        self._model.to(torch.device(device))
        modules = self._model.sortformer_modules
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        if max_speakers > modules.n_spk:
            logger.warning("Sortformer tells apart at most %d speakers; max_speakers %d is capped",
                           modules.n_spk, max_speakers)
        modules.chunk_len = chunk_len
        modules.chunk_left_context = chunk_left_context
        modules.chunk_right_context = chunk_right_context
        modules.fifo_len = fifo_len
        modules.spkcache_len = spkcache_len
        modules.spkcache_update_period = spkcache_update_period
        try:
            modules._check_streaming_parameters()
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"Invalid Sortformer streaming settings: {exc}") from exc
        # One stream per step: the synchronous update (cache and FIFO grow to their sizes) is exact for batch 1.
        self._model.async_streaming = False
        normalize = self._model.cfg.preprocessor.get("normalize", "NA")
        if normalize not in ("NA", None, "None"):
            logger.warning("Sortformer features are normalised per %s; chunked features differ from offline ones",
                           normalize)
        self.device = device
        self.model_label = Path(model).name if Path(model).suffix == ".nemo" else model
        self.max_speakers = min(max_speakers, modules.n_spk)
        self.threshold = threshold
        self.subsampling = int(modules.subsampling_factor)
        self.frame_s = self.subsampling * self._hop / SAMPLE_RATE
        self.latency_s = (chunk_len + chunk_right_context) * self.frame_s + MARGIN_FRAMES * self._hop / SAMPLE_RATE
        # Pay for kernel selection and allocator warm-up at load time, not in a connection's first chunk.
        self.process(self.new_stream(), np.zeros(int((self.latency_s + 0.1) * SAMPLE_RATE), np.float32))

    @property
    def _hop(self) -> int:
        return int(self._model.preprocessor.featurizer.hop_length)

    def new_stream(self) -> SortformerStreamState:
        nemo_state = self._model.sortformer_modules.init_streaming_state(
            batch_size=1, async_streaming=False, device=self._model.device
        )
        return SortformerStreamState(nemo=nemo_state, device=str(self._model.device))

    def _features(self, audio: np.ndarray):
        """Log-mel features, (1, frames, n_mels), of a stretch of audio."""
        torch = self._torch
        signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0).to(self._model.device)
        length = torch.tensor([signal.shape[1]], device=self._model.device)
        features, n_frames = self._model.preprocessor(input_signal=signal, length=length)
        return features[:, :, : int(n_frames[0])].transpose(1, 2)

    def _step(self, state: SortformerStreamState) -> bool:
        """Diarize the next chunk if its audio (with right context and margin) has arrived."""
        modules = self._model.sortformer_modules
        hop = self._hop
        start = state.next_feature
        end = start + modules.chunk_len * self.subsampling
        left = min(modules.chunk_left_context * self.subsampling, start)
        right = modules.chunk_right_context * self.subsampling
        if (end + right + MARGIN_FRAMES) * hop > state.received:
            return False
        first_sample = max(0, start - left - MARGIN_FRAMES) * hop
        audio = state.audio[first_sample - state.audio_start : (end + right + MARGIN_FRAMES) * hop - state.audio_start]
        skip = start - left - first_sample // hop
        features = self._features(audio)[:, skip : skip + left + (end - start) + right]
        torch = self._torch
        empty = torch.zeros((1, 0, modules.n_spk), device=self._model.device)
        state.nemo, preds = self._model.forward_streaming_step(
            processed_signal=features,
            processed_signal_length=torch.tensor([features.shape[1]], device=self._model.device),
            streaming_state=state.nemo,
            total_preds=empty,
            left_offset=left,
            right_offset=right,
        )
        active = (preds[0, :, : self.max_speakers] > self.threshold).cpu().numpy()
        first_frame = start // self.subsampling
        for offset, speakers in enumerate(active):
            t = round((first_frame + offset) * self.frame_s, 6)
            for speaker in np.flatnonzero(speakers):
                state.mark(int(speaker) + 1, t, round(t + self.frame_s, 6))
        state.next_feature = end
        state.processed_s = round((first_frame + len(active)) * self.frame_s, 6)
        keep_from = max(0, end - modules.chunk_left_context * self.subsampling - MARGIN_FRAMES) * hop
        if keep_from > state.audio_start:
            state.audio = state.audio[keep_from - state.audio_start :]
            state.audio_start = keep_from
        return True

    def process(self, state: SortformerStreamState, audio: np.ndarray) -> List[SpeakerSegment]:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio):
            state.audio = np.concatenate([state.audio, audio])
            state.received += len(audio)
            with device_faults(self.device, "diarization"), self._torch.inference_mode():
                while self._step(state):
                    pass
        return state.take_changes()

    def close(self) -> None:
        model, self._model = getattr(self, "_model", None), None
        if model is not None and str(self.device).startswith("cuda"):
            del model
            self._torch.cuda.empty_cache()
