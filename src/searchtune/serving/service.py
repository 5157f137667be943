"""What the server computes, without HTTP: load a model version, rerank, search, score pairs.

A score is the model's probability ``sigmoid(logit)`` that the product answers the query,
equal (to float rounding) to ``sigmoid`` of the evaluation step's logit for the same pair:
the product vectors in the index are the model's own embeddings of the product texts, and
the query goes through the same encoder (see ``ml/embedding.py``).

Rerank candidates are product ids (their stored vectors are used) and/or product texts
(embedded on the fly); an id the index holds wins over a text given with it. A
cross-encoder has no vectors: it reranks only candidates that come with their text and
cannot search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import vector_index
from searchtune.serving.batcher import Batcher, TextVectorCache
from searchtune.serving.protocol import BadRequest, Candidate

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """How the model is loaded and run.

    Args:
        model_dir: a pulled registry version or a fine-tune output.
        index_dir: the product index; '' = ``<model_dir>/index`` when it exists.
        threads: torch and FAISS threads (0 = one per core).
        cache_size: texts whose vectors are kept (queries and on-the-fly products).
        max_pending: requests waiting or running before new ones get 503.
        max_batch_texts: the most texts one forward pass takes.
        nprobe: IVF cells searched per query; 0 = the value recorded at build time.
        verify: check every file against the version's MANIFEST.json before loading.
        engine: what embeds queries: ``auto`` (ONNX Runtime when installed), ``torch`` or ``onnx``.
    """

    model_dir: str
    index_dir: str = ""
    threads: int = 1
    cache_size: int = 10_000
    max_pending: int = 64
    max_batch_texts: int = 256
    nprobe: int = 0
    verify: bool = True
    engine: str = "auto"


def verify_manifest(folder: str) -> dict | None:
    """Check every file a registry MANIFEST.json lists (size and SHA-256); None if there is no manifest.

    Raises:
        SearchtuneError: a listed file is missing or differs, naming it.
    """
    path = Path(folder) / records.MANIFEST_FILE
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    for entry in manifest.get("files", []):
        file = Path(folder) / entry["path"]
        if not file.is_file():
            raise SearchtuneError(f"{file}: listed in {path} but missing")
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if file.stat().st_size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise SearchtuneError(f"{file}: size or sha256 differs from {path} (corrupt or partial download)")
    return manifest


def check_model_dir(model_dir: str, index_dir: str = "") -> None:
    """Fail at once, before the server starts, on folders that cannot be served."""
    if not os.path.isfile(os.path.join(model_dir, records.ModelRecord.FILE)):
        raise SearchtuneError(f"{model_dir} is not a searchtune model folder ({records.ModelRecord.FILE} missing); "
                              "use `searchtune models pull` or a fine-tune output")
    if index_dir and not os.path.isfile(os.path.join(index_dir, vector_index.IndexRecord.FILE)):
        raise SearchtuneError(f"{index_dir} is not a product index ({vector_index.IndexRecord.FILE} missing)")


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


class RelevanceService:
    """A loaded model (and index) answering rerank, search and pair requests.

    Call :meth:`load` (slow: reads, verifies and merges the model) before the rest.
    """

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.encoder = None
        self.index: vector_index.VectorIndex | None = None
        self.search_unavailable = "the model is still loading"
        self.batcher: Batcher | None = None
        self.manifest: dict | None = None
        self.ready = False

    def load(self) -> None:
        """Verify, load the model and the index, start the worker; then :attr:`ready` is True."""
        from searchtune.ml import embedding

        started = time.perf_counter()
        settings = self.settings
        check_model_dir(settings.model_dir, settings.index_dir)
        self.manifest = verify_manifest(settings.model_dir) if settings.verify else None
        vector_index.set_threads(settings.threads)
        self.encoder = embedding.TextEncoder(settings.model_dir, threads=settings.threads, engine=settings.engine)
        index_dir = settings.index_dir or os.path.join(settings.model_dir, records.INDEX_DIR)
        if not self.encoder.has_vectors:
            self.search_unavailable = ("search is unavailable: this model is a cross-encoder, which has no product "
                                       "vectors; rerank scores candidates given with their product_text")
        elif not os.path.isdir(index_dir):
            self.search_unavailable = (f"search is unavailable: no product index ({index_dir} does not exist; build one "
                                       "with the index step, or pass --index-dir)")
        else:
            self.index = vector_index.VectorIndex(index_dir, nprobe=settings.nprobe)
            if self.index.record.model_fingerprint != self.encoder.fingerprint:
                raise SearchtuneError(f"{index_dir} was built with another model (fingerprint "
                                      f"{self.index.record.model_fingerprint[:12]}, this model {self.encoder.fingerprint[:12]})")
            self.search_unavailable = ""
        embed = self.encoder.embed if self.encoder.has_vectors else None
        self.batcher = Batcher(embed, TextVectorCache(settings.cache_size), settings.max_pending, settings.max_batch_texts)
        self.ready = True
        log.info("ready in %.1f s: %s", time.perf_counter() - started, json.dumps(self.describe()))

    def describe(self) -> dict:
        """The version, model and index being served (logged at start, returned as model metadata)."""
        index = None if self.index is None else {
            "kind": self.index.record.kind, "count": len(self.index), "nprobe": getattr(self.index.index, "nprobe", None),
            "catalog": self.index.record.catalog.get("source")}
        return {"model_dir": self.settings.model_dir,
                "version": (self.manifest or {}).get("version"),
                "architecture": None if self.encoder is None else self.encoder.architecture,
                "engine": None if self.encoder is None else self.encoder.engine,
                "index": index, "search": self.search_unavailable or "available"}

    # ------------------------------------------------------------------ operations

    async def rerank(self, items: list[tuple[str, list[Candidate]]]) -> list[np.ndarray]:
        """Probabilities of each item's candidates for its query, in the candidates' order.

        Args:
            items: ``(query, candidates)`` pairs; a candidate names a ``product_id`` the
                index holds and/or carries its ``product_text``.

        Raises:
            BadRequest: a candidate's id is unknown and it has no text (naming it).
        """
        if not self.encoder.has_vectors:
            return await self._rerank_pairs(items)
        texts: list[str] = []
        plans = []
        for number, (query, candidates) in enumerate(items):
            rows = self._rows(number, candidates)
            texts.append(query)
            fresh = [i for i, row in enumerate(rows) if row < 0]
            plans.append((len(texts) - 1, rows, fresh, len(texts)))
            texts.extend(candidates[i].product_text for i in fresh)

        def finish(vectors: np.ndarray) -> list[np.ndarray]:
            results = []
            for query_at, rows, fresh, fresh_at in plans:
                candidate_vectors = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
                stored = rows >= 0
                if stored.any():
                    candidate_vectors[stored] = self.index.vectors(rows[stored])
                candidate_vectors[fresh] = vectors[fresh_at : fresh_at + len(fresh)]
                results.append(_probabilities(self.encoder.logits_from_cosine(candidate_vectors @ vectors[query_at])))
            return results

        return await self.batcher.submit(texts, finish)

    def _rows(self, number: int, candidates: list[Candidate]) -> np.ndarray:
        rows = np.full(len(candidates), -1, dtype=np.int64)
        named = [i for i, c in enumerate(candidates) if c.product_id is not None]
        if named and self.index is not None:
            rows[named] = self.index.rows_of([candidates[i].product_id for i in named])
        unknown = [i for i in named if rows[i] < 0 and candidates[i].product_text is None]
        if unknown:
            shown = ", ".join(repr(candidates[i].product_id) for i in unknown[:5])
            where = "the index" if self.index is not None else f"any index ({self.search_unavailable})"
            raise BadRequest(f"instance {number}: {len(unknown)} product_id(s) not in {where} and given without "
                             f"product_text: {shown}")
        return rows

    async def _rerank_pairs(self, items: list[tuple[str, list[Candidate]]]) -> list[np.ndarray]:
        """Cross-encoder: every candidate needs its text; the pairs go through the model as they are."""
        queries, texts, sizes = [], [], []
        for number, (query, candidates) in enumerate(items):
            for position, candidate in enumerate(candidates):
                if candidate.product_text is None:
                    raise BadRequest(f"instance {number}, candidate {position}: a cross-encoder scores product texts "
                                     "only (it has no product index); give product_text")
                queries.append(query)
                texts.append(candidate.product_text)
            sizes.append(len(candidates))

        def finish(_vectors) -> list[np.ndarray]:
            scores = _probabilities(self.encoder.score_pairs(queries, texts))
            return np.split(scores, np.cumsum(sizes)[:-1])

        return await self.batcher.submit([], finish)

    async def search(self, queries: list[str], k: int) -> list[tuple[list[str], np.ndarray]]:
        """Top-``k`` products of the index for each query: ``(product_ids, probabilities)``, best first.

        Raises:
            BadRequest: there is no index to search (cross-encoder, or none loaded).
        """
        if self.index is None:
            raise BadRequest(self.search_unavailable)
        return await self.batcher.submit(list(queries), combine=self._search_jobs, payload=k)

    def _search_jobs(self, jobs) -> list[list[tuple[list[str], np.ndarray]]]:
        """One FAISS search for the queries of every waiting search request (worker thread)."""
        inner, ids = self.index.search(np.concatenate([job.vectors for job in jobs]), max(job.payload for job in jobs))
        results, start = [], 0
        for job in jobs:
            rows = []
            for row_scores, row_ids in zip(inner[start : start + len(job.texts)], ids[start : start + len(job.texts)], strict=True):
                found = np.isfinite(row_scores[: job.payload])
                rows.append((row_ids[: job.payload][found].tolist(),
                             _probabilities(self.encoder.logits_from_cosine(row_scores[: job.payload][found]))))
            results.append(rows)
            start += len(job.texts)
        return results

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
