"""A judge for tests: an OpenAI-compatible /chat/completions on 127.0.0.1 whose replies a subclass decides."""

import contextlib
import http.server
import json
import threading


class StubJudge(http.server.BaseHTTPRequestHandler):
    """Subclasses define ``reply(body) -> str`` (the judge's text) or None (answered with HTTP 500)."""

    bodies: list = []

    def reply(self, body: dict):
        raise NotImplementedError

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        text = self.reply(body)
        if text is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"model": body["model"], "choices": [{"message": {"content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def field(body: dict, name: str) -> str:
    """A field of the judge prompt (``Predicted Answer``, ``Correct Answer``)."""
    return body["messages"][1]["content"].split(f"{name}: ")[1].split("\n")[0]


@contextlib.contextmanager
def serving(handler: type):
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
