"""AlignAtt (SimulStreaming's policy) on a PyTorch Whisper, read top to bottom:

- `heads.py`: which decoder cross-attention heads follow the audio (alignment heads);
- `decoder.py`: the decoder run explicitly, with a KV cache owned by the caller and those heads' attention;
- `search.py`: the step's token search (greedy or beams) that stops where attention reaches the audio's end;
- `backend.py`: one step per request, batched encoder windows, shared by a device's connections.
"""

from whisperlivekit.asr.backends.alignatt.backend import AlignAttBackend

__all__ = ["AlignAttBackend"]
