"""A local OpenAI-compatible embeddings endpoint over the local model, for tests and demos.

``POST /v1/embeddings`` (or ``/embeddings``) with ``{"model", "input"}`` answers
``{"data": [{"embedding", "index"}], "model", "usage"}``, as OpenAI does, so
Weaviate's ``text2vec-openai`` module (``baseURL``) and tercul_sync's own
``openai`` embedder can both use it. ``GET /stats`` tells how many requests
and texts it served; ``POST /fail`` with ``{"status": 429, "times": 3}`` makes
the next requests fail, for tests of backoff.

Run it with ``tercul-sync embed-serve --port 8000``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tercul_sync.engine.embedding import LocalE5Embedder

RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 10_000_000


class EmbeddingServer:
    """The server, with its counters and fault switch; ``start()`` serves in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, batch_size: int = 32) -> None:
        self.embedder = LocalE5Embedder(batch_size)
        self.requests = 0
        self.texts = 0
        self._fail_status = 0
        self._fail_times = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> EmbeddingServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _take_fault(self) -> int:
        with self._lock:
            if self._fail_times > 0:
                self._fail_times -= 1
                return self._fail_status
            return 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # small keep-alive answers otherwise wait for a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                # Rate limits as OpenAI states them: without them Weaviate's text2vec-openai module
                # sends one object per request; with them it batches.
                for kind, limit in (("requests", RATE_LIMIT_REQUESTS), ("tokens", RATE_LIMIT_TOKENS)):
                    self.send_header(f"x-ratelimit-limit-{kind}", str(limit))
                    self.send_header(f"x-ratelimit-remaining-{kind}", str(limit))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/stats":
                    self._reply(200, {"requests": server.requests, "texts": server.texts})
                else:
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if self.path.rstrip("/") == "/fail":
                    body = self._body()
                    with server._lock:
                        server._fail_status, server._fail_times = int(body["status"]), int(body["times"])
                    self._reply(200, {"ok": True})
                    return
                if not self.path.rstrip("/").endswith("/embeddings"):
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = self._body()
                texts = body.get("input")
                texts = [texts] if isinstance(texts, str) else list(texts or [])
                with server._lock:
                    server.requests += 1
                fault = server._take_fault()
                if fault:
                    self._reply(fault, {"error": {"message": "injected fault", "type": "server_error"}})
                    return
                vectors = server.embedder.embed_passages([str(t) for t in texts])
                with server._lock:
                    server.texts += len(texts)
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
                tokens = sum(len(str(t).split()) for t in texts)
                usage = {"prompt_tokens": tokens, "total_tokens": tokens}
                self._reply(
                    200, {"object": "list", "data": data, "model": body.get("model", ""), "usage": usage}
                )

        return Handler
