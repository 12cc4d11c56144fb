"""Speech recognition: Whisper backends behind one small interface, and streaming policies."""
