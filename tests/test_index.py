"""The index step: catalog in (training data, or files local or gs://), FAISS index and ids out."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.ml import embedding, vector_index
from searchtune.steps import index as step
from searchtune.steps import ingest, splits


@pytest.fixture(scope="module")
def encoder(trained_model_dir):
    return embedding.TextEncoder(trained_model_dir, threads=1)


@pytest.fixture(scope="module")
def default_index(trained_model_dir, splits_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("index"))
    step.build_index(trained_model_dir, splits_dir, out, threads=1)
    return out


def test_the_default_catalog_is_the_run_data_with_its_own_product_uid(default_index, sample_file, sample_frame, encoder):
    loaded = vector_index.VectorIndex(default_index)
    record = loaded.record
    products = sample_frame.drop_duplicates("product_uid")
    assert record.kind == "flat-ip" and record.count == len(products) == len(loaded)
    assert record.catalog["id_scheme"] == "catalog column" and record.catalog["id_column"] == "product_uid"
    assert record.catalog["source"] == f"the run's data: {sample_file}"
    assert record.catalog["text_columns"] == ["product_title", "brand"]  # what ingest trained on
    assert record.model_fingerprint == encoder.fingerprint and record.architecture == "bi-encoder"
    assert sorted(loaded.ids) == sorted(products["product_uid"].astype(str))
    ids = products["product_uid"].astype(str).head(20).tolist()
    rows = loaded.rows_of(ids)
    assert (rows >= 0).all()
    # The stored vectors are the model's embeddings of ingest's own product text for that product.
    texts = [f"{t} | {b}" for t, b in zip(products["product_title"].head(20), products["brand"].head(20), strict=True)]
    assert np.abs(loaded.vectors(rows) - encoder.embed(texts)).max() < 1e-5
    assert loaded.rows_of(["not-a-product"]).tolist() == [-1]
    # Exact search: a product's own vector finds it first.
    _, found = loaded.search(loaded.vectors(rows[:3]), 1)
    assert found[:, 0].tolist() == ids[:3]


def test_data_without_the_id_column_falls_back_to_text_hashes_and_says_so(trained_model_dir, sample_frame, tmp_path):
    from searchtune.params import IngestParams

    data = str(tmp_path / "judgements.csv")
    sample_frame.drop(columns=["product_uid"]).to_csv(data, index=False)
    splits_dir = str(tmp_path / "splits")
    ingest.ingest(splits_dir, IngestParams(data=data))
    record = step.build_index(trained_model_dir, splits_dir, str(tmp_path / "out"), threads=1)
    texts = pd.concat([splits.read_split(splits_dir, s)["product_text"] for s in splits.SPLITS]).drop_duplicates()
    assert record.count == len(texts) and record.catalog["id_scheme"] == "sha256(product_text)[:16]"
    assert record.catalog["id_note"].startswith(f"no 'product_uid' ids: {data}: missing column(s) 'product_uid'")
    loaded = vector_index.VectorIndex(str(tmp_path / "out"))
    ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    assert (loaded.rows_of(ids) >= 0).all()


def write_catalog(frame: pd.DataFrame, path, kind: str) -> str:
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_a_catalog_file_is_read_in_chunks_with_its_id_and_joined_text_columns(kind, trained_model_dir, splits_dir,
                                                                               sample_frame, encoder, tmp_path, monkeypatch):
    monkeypatch.setattr(step, "CHUNK_ROWS", 97)  # several chunks, duplicates across them
    catalog = sample_frame[["product_uid", "product_title", "brand"]].copy()
    catalog.loc[catalog.index[:2], "product_title"] = ""  # the brand alone is still a text
    catalog.loc[catalog.index[2], ["product_title", "brand"]] = ["", ""]
    path = write_catalog(catalog, tmp_path / f"catalog.{kind}", kind)
    record = step.build_index(trained_model_dir, splits_dir, str(tmp_path / "out"), catalog=path,
                              id_column="product_uid", text_columns="product_title,brand", threads=1)
    products = catalog.drop(catalog.index[2]).drop_duplicates("product_uid")
    assert record.count == len(products) and record.catalog["skipped_empty"] == 1
    assert record.catalog["duplicates_dropped"] == len(catalog) - 1 - len(products)
    loaded = vector_index.VectorIndex(str(tmp_path / "out"))
    first = products.iloc[5]
    text = f"{first.product_title} | {first.brand}"  # ingest's join
    row = loaded.rows_of([str(first.product_uid)])
    assert np.abs(loaded.vectors(row)[0] - encoder.embed([text])[0]).max() < 1e-5


def test_a_gs_catalog_glob_gives_the_same_index_as_local_files(trained_model_dir, splits_dir, sample_frame, gcs_bucket,
                                                              tmp_path):
    catalog = sample_frame[["product_uid", "product_title"]].drop_duplicates("product_uid")
    halves = [catalog.iloc[: len(catalog) // 2], catalog.iloc[len(catalog) // 2 :]]
    for number, half in enumerate(halves):
        local = write_catalog(half, tmp_path / f"part-{number}.csv", "csv")
        storage.upload(local, f"{gcs_bucket}/catalog/part-{number}.csv")
    record = step.build_index(trained_model_dir, splits_dir, str(tmp_path / "gcs"), catalog=f"{gcs_bucket}/catalog/*.csv",
                              id_column="product_uid", text_columns="product_title", threads=1)
    local_record = step.build_index(trained_model_dir, splits_dir, str(tmp_path / "local"), catalog=str(tmp_path / "part-*.csv"),
                                    id_column="product_uid", text_columns="product_title", threads=1)
    assert record.count == local_record.count == len(catalog)
    gcs_ids = vector_index.VectorIndex(str(tmp_path / "gcs")).ids.tolist()
    assert gcs_ids == vector_index.VectorIndex(str(tmp_path / "local")).ids.tolist()


def test_above_the_exact_limit_the_index_is_ivf_with_measured_recall(trained_model_dir, splits_dir, tmp_path):
    record = step.build_index(trained_model_dir, splits_dir, str(tmp_path), exact_max=50, threads=1)
    assert record.kind == "ivf-flat" and record.nlist and record.nprobe and record.train_size == record.count
    assert record.recall_at_10 >= vector_index.RECALL_TARGET and "query vectors" in record.recall_probes
    saved = json.loads((tmp_path / "index.json").read_text())
    assert saved["nprobe"] == record.nprobe and saved["faiss_version"]
    loaded = vector_index.VectorIndex(str(tmp_path))
    assert loaded.index.nprobe == record.nprobe
    rows = np.arange(5)
    _, found = loaded.search(loaded.vectors(rows), 1)
    assert found[:, 0].tolist() == loaded.ids[rows].tolist()


def test_a_catalog_without_the_id_column_fails_naming_it(trained_model_dir, splits_dir, sample_frame, tmp_path):
    path = write_catalog(sample_frame[["product_title"]], tmp_path / "catalog.parquet", "parquet")
    with pytest.raises(SearchtuneError, match=r"missing column\(s\) 'sku'; columns found: 'product_title'"):
        step.build_index(trained_model_dir, splits_dir, str(tmp_path / "out"), catalog=path, id_column="sku",
                         text_columns="product_title", threads=1)


def test_index_files_that_do_not_belong_together_are_refused(default_index, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(default_index, broken)
    record = json.loads((broken / "index.json").read_text())
    (broken / "index.json").write_text(json.dumps({**record, "count": record["count"] + 1}))
    with pytest.raises(SearchtuneError, match="do not belong together"):
        vector_index.VectorIndex(str(broken))


def damaged_copy(default_index, tmp_path, damage) -> str:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(default_index, broken)
    damage(broken)
    return str(broken)


def test_a_truncated_index_file_is_refused_naming_it(default_index, tmp_path):
    def truncate(folder):
        data = (folder / vector_index.INDEX_FILE).read_bytes()
        (folder / vector_index.INDEX_FILE).write_bytes(data[: len(data) // 2])

    broken = damaged_copy(default_index, tmp_path, truncate)
    with pytest.raises(SearchtuneError, match=r"index.faiss is damaged: faiss cannot read it \("):
        vector_index.VectorIndex(broken)


def test_a_missing_or_damaged_ids_file_is_refused_naming_it(default_index, tmp_path):
    broken = damaged_copy(default_index, tmp_path, lambda folder: (folder / vector_index.IDS_FILE).unlink())
    with pytest.raises(SearchtuneError, match=r"ids.parquet is missing: the product index is incomplete"):
        vector_index.VectorIndex(broken)
    (tmp_path / "broken" / vector_index.IDS_FILE).write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SearchtuneError, match=r"ids.parquet is damaged: "):
        vector_index.VectorIndex(broken)


def test_shuffled_ids_are_refused_because_rows_would_answer_with_the_wrong_products(default_index, tmp_path):
    def shuffle(folder):
        ids = pd.read_parquet(folder / vector_index.IDS_FILE)
        ids.iloc[::-1].reset_index(drop=True).to_parquet(folder / vector_index.IDS_FILE, index=False)

    broken = damaged_copy(default_index, tmp_path, shuffle)
    assert sorted(pd.read_parquet(f"{broken}/{vector_index.IDS_FILE}")[vector_index.ID_COLUMN]) == sorted(
        pd.read_parquet(f"{default_index}/{vector_index.IDS_FILE}")[vector_index.ID_COLUMN])
    with pytest.raises(SearchtuneError, match="holds other ids, or the same ids in another order"):
        vector_index.VectorIndex(broken)
    assert json.loads(open(f"{default_index}/index.json").read())["ids_sha256"]
