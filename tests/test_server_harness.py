"""The suite's own server harness: a test talks to the server it started, never to another worker's."""

from __future__ import annotations

import http.server
import threading

from conftest import ServerProcess, listens_on


class _OtherWorkersServer(http.server.BaseHTTPRequestHandler):
    """Answers /health 200 like any of our servers: what the other xdist worker's server looks like."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args) -> None:
        pass


def test_a_port_another_server_took_first_is_not_mistaken_for_ours_and_the_server_starts_on_another():
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherWorkersServer)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    taken = other.server_address[1]
    try:
        server = ServerProcess("--pcm-input")
        server.port = taken  # as if free_port() had handed both workers the same port
        server.start()
        try:
            assert server.port != taken
            assert listens_on(server.proc.pid, server.port)
            assert server.get("/health").json()["status"] in ("ok", "ready")
        finally:
            server.stop()
    finally:
        other.shutdown()
