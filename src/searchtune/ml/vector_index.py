"""Product vectors in a FAISS index, with the product ids and the parameters it was built with.

Layout of an index folder (the index step writes it; a registry version stores it as ``index/``)::

    index.json    IndexRecord: kind, size, parameters, measured recall, the model and catalog it came from
    index.faiss   the FAISS index holding every unit-length product vector (row i = ids row i)
    ids.parquet   one column ``product_id`` (string), in row order

Kinds (vectors are unit length, so inner product = cosine):

* ``flat-ip`` (exact): up to ``EXACT_MAX_VECTORS``. One query against 200,000 vectors takes
  12 ms on one core here, against 1,000,000 it takes 53 ms (2 shared cores, AMD EPYC,
  faiss 1.15, single thread; two threads were slower), over the 30 ms search budget.
* ``ivf-flat`` above: k-means cells (``nlist`` about the square root of the count), vectors
  stored unquantized, so a found product's score is exact; only recall is approximate.
  ``nprobe`` is the smallest that reaches ``RECALL_TARGET`` recall@10 against exact search
  on probe queries, measured at build time and recorded.
* ``none``: the model cannot have product vectors (a cross-encoder); ``reason`` says so.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from searchtune.errors import SearchtuneError, first_line
from searchtune.records import INDEX_IDS_FILE, INDEX_VECTORS_FILE, IndexRecord, now

log = logging.getLogger(__name__)

INDEX_FILE = INDEX_VECTORS_FILE
IDS_FILE = INDEX_IDS_FILE
ID_COLUMN = "product_id"
EXACT_MAX_VECTORS = 250_000
RECALL_TARGET = 0.95
RECALL_PROBES = 256
RECALL_K = 10


def set_threads(threads: int) -> None:
    """FAISS's OpenMP threads (0 = one per core)."""
    import faiss

    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def _without_self(rows: np.ndarray, own_rows: np.ndarray | None, k: int) -> np.ndarray:
    """Top-k rows per probe; a probe that is itself a catalog row does not count as its own neighbour."""
    if own_rows is None:
        return rows[:, :k]
    kept = [row[row != own][:k] for row, own in zip(rows, own_rows, strict=True)]
    return np.stack([np.pad(r, (0, k - len(r)), constant_values=-1) for r in kept])


def build(vectors: np.ndarray, exact_max: int = EXACT_MAX_VECTORS, nlist: int = 0,
          probes: np.ndarray | None = None, recall_target: float = RECALL_TARGET, seed: int = 0):
    """Build the index for unit-length ``vectors`` (row i = product i).

    Args:
        vectors: float32 array ``(count, dimension)``, rows of unit length.
        exact_max: the most vectors that get an exact (flat) index.
        nlist: IVF cells; 0 = about the square root of the count (a power of two).
        probes: query vectors for the recall measurement of an IVF index; None = a sample
            of the catalog's own vectors (each not counting itself as a neighbour).
        recall_target: the recall@10 that picks ``nprobe``.
        seed: seed of the k-means training sample and the probe sample.

    Returns:
        ``(faiss_index, parameters)``; ``parameters`` holds the IndexRecord fields
        ``kind``, ``nlist``, ``nprobe``, ``train_size``, ``recall_at_10``, ``recall_probes``.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dimension = vectors.shape
    if count == 0:
        raise SearchtuneError("the catalog has no products to index")
    if count <= exact_max:
        index = faiss.IndexFlatIP(dimension)
        index.add(vectors)
        return index, {"kind": "flat-ip"}
    rng = np.random.default_rng(seed)
    nlist = nlist or int(2 ** round(math.log2(math.sqrt(count))))
    train_size = min(count, 64 * nlist)
    sample = vectors[np.sort(rng.choice(count, train_size, replace=False))]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    index.train(sample)
    for start in range(0, count, 65_536):
        index.add(vectors[start : start + 65_536])
    log.info("IVF index: %d cells trained on %d vectors, %d added in %.1f s", nlist, train_size, count,
             time.perf_counter() - started)
    own_rows = None
    if probes is None:
        own_rows = rng.choice(count, min(RECALL_PROBES, count), replace=False)
        probes, source = vectors[own_rows], "catalog vectors (self excluded)"
    else:
        probes, source = np.ascontiguousarray(probes, dtype=np.float32), f"{len(probes)} given query vectors"
    extra = 0 if own_rows is None else 1
    # Brute force straight on the vectors (BLAS), without a second in-memory copy of them.
    truth = _without_self(faiss.knn(probes, vectors, RECALL_K + extra, metric=faiss.METRIC_INNER_PRODUCT)[1], own_rows, RECALL_K)
    nprobe, recall = nlist, 1.0
    for candidate in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if candidate > nlist:
            break
        index.nprobe = candidate
        recall = _recall(_without_self(index.search(probes, RECALL_K + extra)[1], own_rows, RECALL_K), truth)
        if recall >= recall_target:
            nprobe = candidate
            break
    index.nprobe = nprobe
    log.info("IVF nprobe %d: recall@%d %.3f on %s", nprobe, RECALL_K, recall, source)
    return index, {"kind": "ivf-flat", "nlist": nlist, "nprobe": nprobe, "train_size": train_size,
                   "recall_at_10": round(recall, 4), "recall_probes": source}


def save(folder: str, index, ids: list[str] | np.ndarray, record: IndexRecord) -> IndexRecord:
    """Write ``index.faiss``, ``ids.parquet`` and ``index.json`` (last) into ``folder``."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    if record.kind != "none":
        if index.ntotal != len(ids):
            raise SearchtuneError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        faiss.write_index(index, os.path.join(folder, INDEX_FILE))
        pq.write_table(pa.table({ID_COLUMN: pa.array(list(ids), pa.string())}), os.path.join(folder, IDS_FILE))
    record = record.model_copy(update={"faiss_version": faiss.__version__ if record.kind != "none" else "",
                                       "ids_sha256": ids_digest(list(ids)) if record.kind != "none" else "",
                                       "created_at": record.created_at or now()})
    record.write(folder)
    return record


def ids_digest(ids) -> str:
    """sha256 of the product ids in row order (each id, then a NUL)."""
    digest = hashlib.sha256()
    for product_id in ids:
        digest.update(str(product_id).encode() + b"\0")
    return digest.hexdigest()


class VectorIndex:
    """A loaded index folder: id lookup, stored vectors and top-k search.

    Args:
        folder: an index folder written by :func:`save`.
        nprobe: IVF cells searched per query; 0 = the value recorded at build time.
    """

    def __init__(self, folder: str, nprobe: int = 0):
        import faiss
        import pandas as pd
        import pyarrow.parquet as pq

        self.folder = folder
        self.record = IndexRecord.read(folder)
        if self.record.kind == "none":
            raise SearchtuneError(f"{folder} holds no product index: {self.record.reason}")
        # Damaged files are refused here, with or without the registry's checksums (serve --no-verify).
        for name in (INDEX_FILE, IDS_FILE):
            if not (Path(folder) / name).is_file():
                raise SearchtuneError(f"{Path(folder) / name} is missing: the product index is incomplete")
        try:
            self.index = faiss.read_index(str(Path(folder) / INDEX_FILE))
        except RuntimeError as error:
            raise SearchtuneError(f"{Path(folder) / INDEX_FILE} is damaged: faiss cannot read it "
                                  f"({first_line(error)[:200]})") from None
        try:
            ids = pq.read_table(Path(folder) / IDS_FILE, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy(zero_copy_only=False)
        except (OSError, KeyError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise SearchtuneError(f"{Path(folder) / IDS_FILE} is damaged: {first_line(error)[:200]}") from None
        if self.index.ntotal != len(ids) or self.index.ntotal != self.record.count:
            raise SearchtuneError(f"{folder}: {self.index.ntotal} vectors, {len(ids)} ids and a record of "
                                  f"{self.record.count}: the index files do not belong together")
        if self.record.ids_sha256 and ids_digest(ids) != self.record.ids_sha256:
            raise SearchtuneError(f"{Path(folder) / IDS_FILE} holds other ids, or the same ids in another order, than "
                                  f"the index was built with: rows would answer with the wrong products")
        if not self.record.ids_sha256:
            log.warning("%s: the index record has no digest of its ids (built before searchtune checked them); "
                        "their order is trusted", folder)
        self.ids = ids.astype(object)
        self._lookup = pd.Index(self.ids)
        self._lookup.get_indexer(self.ids[:1])  # build the hash table now, not on the first request
        if isinstance(self.index, faiss.IndexIVF):
            self.index.make_direct_map()  # reconstruct() by row for rerank
            self.index.nprobe = nprobe or self.record.nprobe or 1
        self.dimension = self.index.d

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def rows_of(self, product_ids: list[str]) -> np.ndarray:
        """Row of each product id; -1 where the index does not hold it."""
        return self._lookup.get_indexer(product_ids)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored unit vectors of ``rows`` (all valid rows)."""
        if not len(rows):
            return np.empty((0, self.dimension), dtype=np.float32)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` products per query vector.

        Returns:
            ``(inner_products, product_ids)``, each ``(len(queries), k')`` with
            ``k' = min(k, len(self))``; an IVF search that finds fewer than ``k'`` pads
            with inner product -inf and id None.
        """
        k = min(k, len(self))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], None)
        return np.where(rows >= 0, scores, -np.inf), ids

