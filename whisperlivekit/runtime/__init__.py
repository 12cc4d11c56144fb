"""The only code that touches model weights: one model set and one worker per device."""
