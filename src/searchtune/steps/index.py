"""Index step: embed the product catalog with the blessed model and build its vector index.

Runs after the gate and before registration, so the index is part of the registered
version (``index/`` next to the model, checksummed by the registry like every other
file) and a server started from a version has the vectors that belong to its model.

The catalog is either

* the run's own data (default): every product of the files the ingest step read (its
  ``stats.json`` names them and the column mapping), with the id from ``catalog_id_column``
  (``product_uid``) when every file has that column, read and joined by the ingest step's
  own readers (so the text is byte for byte what the model was trained on). When the data
  has no such column, the distinct product texts of the ingest output, each with the id
  ``sha256(product_text)[:16]`` (hex: stable across runs, the same text always gets the
  same id); the record's ``catalog.id_scheme`` and ``catalog.id_note`` say which and why; or
* ``catalog``: CSV/TSV, Parquet or JSON Lines files (a file, folder or glob, local or
  gs://) with an id column and the product text columns, joined exactly as the ingest
  step joins them. Files are read one at
  a time and in chunks; vectors go to a scratch file, not to memory, until the index is
  built. Rows without an id or text are skipped, a repeated id keeps its first row; both
  are counted in the record.

Output folder: see ``ml/vector_index.py`` (``index.json``, ``index.faiss``, ``ids.parquet``).
A cross-encoder has no product vectors: the folder then holds only an ``index.json`` of
kind ``none`` that says so, and the server answers search requests with that reason.

Longer than 300 lines: the three catalog sources (catalog files, the run's data with its ids,
the ingest output with hash ids) share one reader and one set of counts, and preflight checks
the catalog with the same reader the step uses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from searchtune import records
from searchtune.errors import SearchtuneError, first_line
from searchtune.io import storage
from searchtune.ml import embedding, vector_index
from searchtune.params import IngestParams
from searchtune.steps import splits
from searchtune.steps.ingestion import files as ingest_files
from searchtune.steps.ingestion import rows as ingest_rows

log = logging.getLogger(__name__)

DEFAULT_ID_COLUMN = "product_uid"
CHUNK_ROWS = 8192
TEXT_ID_SCHEME = "sha256(product_text)[:16]"


def text_product_id(text: str) -> str:
    """The id of a catalog product known only by its text (the default catalog)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _join_text(frame: pd.DataFrame, text_columns: tuple[str, ...]) -> pd.Series:
    """The product text of each row, cleaned and joined by ingest's own ``product_text`` (same text, same vector)."""
    parts = [ingest_rows.text_array(frame[column]) for column in text_columns]
    return pd.Series(ingest_rows.product_text(parts).to_pylist(), dtype=object)


def _chunks(path: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The listed columns of one catalog file, CHUNK_ROWS rows at a time."""
    import pyarrow.parquet as pq

    suffix = Path(path.split("?")[0]).suffix.lower()
    kind = ingest_files.READERS.get(suffix)
    if kind is None:
        raise SearchtuneError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .parquet or .jsonl)")
    with storage.local_copy(path) as local:
        try:
            if kind == "parquet":
                found = pq.ParquetFile(local).schema_arrow.names
                _check_columns(path, columns, found)
                for batch in pq.ParquetFile(local).iter_batches(batch_size=CHUNK_ROWS, columns=columns):
                    yield batch.to_pandas()
                return
            if kind == "csv":
                reader = pd.read_csv(local, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                     encoding="utf-8", encoding_errors="replace", chunksize=CHUNK_ROWS)
            else:
                reader = pd.read_json(local, lines=True, dtype=False, chunksize=CHUNK_ROWS)
            with reader:
                for chunk in reader:
                    _check_columns(path, columns, list(chunk.columns))
                    yield chunk[columns]
        except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SearchtuneError(f"{path}: cannot be read as {kind}: {first_line}") from None


def _check_columns(path: str, wanted: list[str], found: list[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise SearchtuneError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                              f"columns found: {', '.join(repr(str(c)) for c in found)}")


def check_catalog(catalog: str, id_column: str, text_columns: str) -> int:
    """Refuse, before any training, a catalog the index step could not read: a location with no file, a
    file type no reader takes, or a file without the id or a text column. Reads each file's header (a
    Parquet footer, or a CSV/JSONL file's first chunk) and returns the number of files.
    """
    columns = [c.strip() for c in text_columns.split(",") if c.strip()]
    if not columns:
        raise SearchtuneError("catalog_text_columns names no column of the catalog")
    paths = storage.expand(catalog)
    for path in paths:
        next(_chunks(path, list(dict.fromkeys([id_column, *columns]))), None)
    return len(paths)


def data_catalog(splits_dir: str, id_column: str) -> tuple[IngestParams | None, list[str], str]:
    """The run's data files and how ingest read them, when every one has ``id_column``.

    Returns:
        ``(ingest parameters, files, "")``, or ``(None, [], why not)``: then the ids are
        ``sha256(product_text)[:16]`` and the reason goes into the index record.
    """
    try:
        stats = records.IngestStats.read(splits_dir)
        params = IngestParams(**stats.column_mapping)
    except (SearchtuneError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        return None, [], f"the ingest output's {records.IngestStats.FILE} cannot be used ({first_line(error)})"
    for path in stats.sources:
        problem = _lacks_column(path, id_column, params)
        if problem:
            return None, [], problem
    return params, list(stats.sources), ""


def _lacks_column(path: str, column: str, params: IngestParams) -> str:
    """Why ``column`` cannot be read from ``path`` with ingest's reader ('' when it can)."""
    kind, compressed = ingest_files.file_kind(path)
    with storage.local_copy(path) as local:
        batches = ingest_files.read_batches(ingest_files.Source(path, kind, compressed), local, [column], params)
        try:
            next(batches, None)  # the readers check the columns before the first batch
        except SearchtuneError as error:
            return first_line(error)
        finally:
            batches.close()
    return ""


def _id_text_chunks(splits_dir: str, catalog: str, id_column: str, text_columns: tuple[str, ...],
                    data: tuple[IngestParams | None, list[str]]) -> Iterator[tuple[str, pd.Series, pd.Series]]:
    """``(file, ids, texts)`` chunks of every row of the catalog, in file order."""
    params, data_files = data
    if catalog:
        for path in storage.expand(catalog):
            for chunk in _chunks(path, [id_column, *text_columns]):
                ids = chunk[id_column].astype("string").fillna("").str.strip().reset_index(drop=True)
                yield path, ids, _join_text(chunk[list(text_columns)].reset_index(drop=True), text_columns)
    elif params is not None:
        columns = list(dict.fromkeys([id_column, *params.text_column_list]))
        for path in data_files:
            kind, compressed = ingest_files.file_kind(path)
            with storage.local_copy(path) as local:
                for raw, _positions in ingest_files.read_batches(ingest_files.Source(path, kind, compressed), local, columns, params):
                    ids = pd.Series(ingest_rows.as_text(raw.column(id_column)).to_pylist(), dtype=object).str.strip()
                    texts = ingest_rows.product_text([raw.column(c) for c in params.text_column_list])
                    yield path, ids, pd.Series(texts.to_pylist(), dtype=object)
    else:
        for split in splits.SPLITS:
            path = splits.split_path(splits_dir, split)
            for chunk in _chunks(path, ["product_text"]):
                texts = chunk["product_text"].astype(str).reset_index(drop=True)
                yield path, texts.map(text_product_id), texts


def catalog_products(splits_dir: str, catalog: str, id_column: str, text_columns: tuple[str, ...], counts: dict,
                     data: tuple[IngestParams | None, list[str]] = (None, [])) -> Iterator[tuple[list[str], list[str]]]:
    """``(ids, texts)`` chunks of distinct catalog products; ``counts`` collects rows read and skipped.

    Args:
        splits_dir: the ingest output (used when ``catalog`` is empty and ``data`` names no files).
        catalog: catalog files (file, folder or glob; local or gs://); '' = the run's data.
        id_column: the catalog's product id column.
        text_columns: the catalog's product text columns, joined in this order.
        counts: filled with ``rows_read``, ``skipped_empty`` and ``duplicates_dropped``.
        data: from :func:`data_catalog`: the run's data files with ``id_column`` and how
            ingest read them; ``(None, [])`` = the ingest output's texts with hash ids.
    """
    counts.update(rows_read=0, skipped_empty=0, duplicates_dropped=0)
    seen: set[str] = set()
    done = None
    for path, ids, texts in _id_text_chunks(splits_dir, catalog, id_column, text_columns, data):
        if done is not None and path != done:
            log.info("catalog: read %s (%d products so far)", done, len(seen))
        done = path
        counts["rows_read"] += len(ids)
        keep = (ids != "") & (texts != "")
        counts["skipped_empty"] += int((~keep).sum())
        chunk_ids, chunk_texts = [], []
        for product_id, text in zip(ids[keep], texts[keep], strict=True):
            if product_id in seen:
                counts["duplicates_dropped"] += 1
                continue
            seen.add(product_id)
            chunk_ids.append(product_id)
            chunk_texts.append(text)
        if chunk_ids:
            yield chunk_ids, chunk_texts
    if done is not None:
        log.info("catalog: read %s (%d products)", done, len(seen))


def _probe_queries(splits_dir: str, encoder: embedding.TextEncoder, count: int = vector_index.RECALL_PROBES) -> np.ndarray | None:
    """Embedded real queries of the training data, to measure an IVF index's recall with."""
    path = splits.split_path(splits_dir, "train") if splits_dir else ""
    if not path or not os.path.exists(path):
        return None
    queries = pd.read_parquet(path, columns=["query"])["query"].drop_duplicates()
    sample = queries.sample(n=min(count, len(queries)), random_state=0).tolist()
    return encoder.embed(sample)


def build_index(model_dir: str, splits_dir: str, output_dir: str, catalog: str = "",
                id_column: str = DEFAULT_ID_COLUMN, text_columns: str = "product_title",
                exact_max: int = vector_index.EXACT_MAX_VECTORS, threads: int = 0,
                batch_size: int = embedding.DEFAULT_BATCH_SIZE, engine: str = "auto") -> vector_index.IndexRecord:
    """Run the index step.

    Args:
        model_dir: the blessed model (fine-tune output).
        splits_dir: the ingest output: the default catalog, and real queries for the recall check.
        output_dir: local folder for ``index.json``, ``index.faiss`` and ``ids.parquet``.
        catalog: catalog files (CSV/TSV, Parquet, JSONL; file, folder or glob; local or gs://);
            '' = the run's data (:func:`data_catalog`; hash ids when it lacks ``id_column``).
        id_column: the product id column of the catalog, or else of the run's data.
        text_columns: comma-separated product text columns of the catalog, joined as the
            ingest step joins them (without ``catalog``: the columns ingest used).
        exact_max: the most products that get an exact index (IVF above).
        threads: torch and FAISS threads (0 = one per core).
        batch_size: texts per forward pass.
        engine: ``auto``, ``torch`` or ``onnx`` (``ml.embedding``; the same vectors either way).

    Returns:
        The ``IndexRecord`` written to ``index.json``.

    Raises:
        SearchtuneError: unreadable catalog, a missing column, or no products.
    """
    columns = tuple(c.strip() for c in text_columns.split(",") if c.strip())
    if catalog and not columns:
        raise SearchtuneError("text_columns names no column of the catalog")
    started = time.perf_counter()
    encoder = embedding.TextEncoder(model_dir, threads=threads, batch_size=batch_size, engine=engine)
    data, note = (None, []), ""
    if not catalog:
        params, files, note = data_catalog(splits_dir, id_column)
        data = (params, files)
        if params is not None:
            columns = params.text_column_list
    if catalog or data[0] is not None:
        source = {"source": catalog or f"the run's data: {', '.join(data[1])}", "id_column": id_column,
                  "text_columns": list(columns), "id_scheme": "catalog column"}
    else:
        source = {"source": f"{splits_dir} (distinct product_text of every split)", "id_column": None,
                  "text_columns": ["product_text"], "id_scheme": TEXT_ID_SCHEME,
                  "id_note": f"no {id_column!r} ids: {note}"}
        log.warning("product ids are %s: %s", TEXT_ID_SCHEME, source["id_note"])
    common = {"model_fingerprint": encoder.fingerprint, "architecture": encoder.architecture,
              "max_length": encoder.max_length, "catalog": source}
    if not encoder.has_vectors:
        reason = "a cross-encoder has no product vectors: search is unavailable, rerank scores the pairs it is given"
        log.warning("no index: %s", reason)
        return vector_index.save(output_dir, None, [], vector_index.IndexRecord(kind="none", reason=reason, **common))
    vector_index.set_threads(threads)
    counts: dict = {}
    ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="searchtune-index-") as scratch:
        vectors_path = os.path.join(scratch, "vectors.f32")
        embed_seconds = 0.0
        with open(vectors_path, "wb") as vectors_file:
            for chunk_ids, chunk_texts in catalog_products(splits_dir, catalog, id_column, columns, counts, data):
                tick = time.perf_counter()
                vectors_file.write(encoder.embed(chunk_texts).tobytes())
                embed_seconds += time.perf_counter() - tick
                ids.extend(chunk_ids)
                log.info("embedded %d products (%.0f texts/s)", len(ids), len(ids) / max(embed_seconds, 1e-9))
        if not ids:
            raise SearchtuneError(f"the catalog {source['source']} has no products with an id and a text")
        vectors = np.memmap(vectors_path, dtype=np.float32, mode="r", shape=(len(ids), encoder.dimension))
        tick = time.perf_counter()
        probes = _probe_queries(splits_dir, encoder) if len(ids) > exact_max else None
        index, parameters = vector_index.build(vectors, exact_max=exact_max, probes=probes)
        index_seconds = time.perf_counter() - tick
        del vectors
    record = vector_index.IndexRecord(
        **parameters, **common, count=len(ids), dimension=encoder.dimension,
        build_seconds=round(time.perf_counter() - started, 2),
        embedding={"batch_size": batch_size, "threads": threads, "engine": encoder.engine, "seconds": round(embed_seconds, 2),
                   "texts_per_second": round(len(ids) / max(embed_seconds, 1e-9), 1),
                   "index_seconds": round(index_seconds, 2)},
    )
    record.catalog.update(counts, products=len(ids))
    record = vector_index.save(output_dir, index, ids, record)
    log.info("index %s: %d products, %s, built in %.1f s", output_dir, len(ids), record.kind, record.build_seconds)
    return record
