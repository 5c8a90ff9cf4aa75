"""The pre-flight check of a tracking server: slow is not down, down is said at once."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from pipeline.errors import TrackingError
from pipeline.tracking.store import check_server
from tests.conftest import free_port


class SlowHandler(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_GET(self):  # noqa: N802 - the http.server name
        time.sleep(self.delay_s)
        body = b'{"experiments": []}'
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped waiting, as these tests make it do

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_slow_server_is_asked_again_not_reported_down(slow_server, capsys):
    SlowHandler.delay_s = 0.6  # longer than the first try's 0.25 s, within the third's 1 s
    check_server(f"http://127.0.0.1:{slow_server.server_port}", timeout_s=0.25, patience_s=30)
    assert "is slow to answer" in capsys.readouterr().out


def test_a_server_that_never_answers_is_reported_slow_after_the_patience(slow_server):
    SlowHandler.delay_s = 3.0
    with pytest.raises(TrackingError, match="accepts connections but has not answered"):
        check_server(f"http://127.0.0.1:{slow_server.server_port}", timeout_s=0.2, patience_s=0.3)


def test_a_stopped_server_is_reported_down_at_once():
    start = time.monotonic()
    with pytest.raises(TrackingError, match="does not answer"):
        check_server(f"http://127.0.0.1:{free_port()}", timeout_s=5, patience_s=120)
    assert time.monotonic() - start < 30  # refused: none of the 120 s of patience spent on a server not there
