"""HTTP and WebSocket routes: thin, they parse, admit, run an engine and map errors to codes."""
