"""Speech recognition: streaming policies (`policies/`) over Whisper backends (`backends/`).

`types.py` holds what crosses between them: requests, results, words, and the two protocols.
Weights (names, formats, conversion) live in `whisperlivekit.weights`.
"""
