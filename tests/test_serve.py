"""``searchtune serve``: a real KServe server process answering rerank, search and pair scoring
with the evaluation step's scores, ready only once the model and index are loaded."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from searchtune.ml import modeling, scoring
from searchtune.serving.local import LocalServer
from searchtune.steps import index as index_step
from searchtune.steps import splits

NAME = "relevance"


def post(url: str, payload, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def probabilities(model_dir: str, frame) -> np.ndarray:
    """The evaluation step's scores (``score_frame`` logits) as probabilities."""
    model, tokenizer, record = modeling.load_trained_model(model_dir)
    return 1 / (1 + np.exp(-scoring.score_frame(model, tokenizer, record.architecture, record.max_length, frame)))


@pytest.fixture(scope="module")
def catalog(sample_frame):
    frame = sample_frame.drop_duplicates("product_uid")
    return frame.assign(product_id=frame["product_uid"].astype(str),
                        product_text=frame["product_title"] + " | " + frame["brand"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def server(trained_model_dir, splits_dir, sample_file, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("index"))
    index_step.build_index(trained_model_dir, splits_dir, index_dir, catalog=sample_file, id_column="product_uid",
                           text_columns="product_title,brand", threads=1)
    log = tmp_path_factory.mktemp("server") / "server.log"
    with LocalServer(["--model-dir", trained_model_dir, "--index-dir", index_dir, "--model-name", NAME], str(log)) as running:
        yield running


def test_not_ready_until_the_model_and_index_are_loaded(server):
    # The port opens first (liveness), readiness follows the load.
    assert 503 in server.ready_statuses and server.ready_statuses[-1] == 200
    assert server.ready_statuses.index(503) < server.ready_statuses.index(200)
    with urllib.request.urlopen(f"{server.url}/v1/models/{NAME}", timeout=10) as response:
        assert json.loads(response.read()) == {"name": NAME, "ready": True}
    with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=10) as response:
        assert response.status == 200


def test_pairs_keep_the_v1_shape_and_equal_the_evaluation_scores(server, trained_model_dir, splits_dir):
    test = splits.read_split(splits_dir, "test").head(20)
    status, body = post(f"{server.url}/v1/models/{NAME}:predict",
                        {"instances": test[["query", "product_text"]].to_dict(orient="records")})
    assert status == 200 and len(body["predictions"]) == 20
    assert body["predictions"] == pytest.approx(probabilities(trained_model_dir, test).tolist(), abs=1e-4)


def test_rerank_by_id_and_by_text_equals_the_evaluation_scores(server, trained_model_dir, catalog):
    products = catalog.head(30)
    query = "cordless drill"
    candidates = [{"product_id": pid} for pid in products["product_id"][:20]]
    candidates += [{"product_text": text} for text in products["product_text"][20:25]]  # not by id: embedded now
    candidates += [{"product_id": "unknown-sku", "product_text": text} for text in products["product_text"][25:]]
    status, body = post(f"{server.url}/v1/models/{NAME}:predict", {"instances": [{"query": query, "candidates": candidates}]})
    assert status == 200, body
    expected = probabilities(trained_model_dir, products.assign(query=query, label=0))
    assert body["predictions"][0]["scores"] == pytest.approx(expected.tolist(), abs=1e-4)


def test_search_returns_the_best_products_of_the_catalog_with_their_scores(server, trained_model_dir, catalog):
    query = "ryobi cordless drill"
    status, body = post(f"{server.url}/v1/models/{NAME}-search:predict", {"instances": [{"query": query, "k": 5}]})
    assert status == 200, body
    (found,) = body["predictions"]
    # The index is exact here: the top 5 are the 5 best of every catalog product by the evaluation's score,
    # best first (products whose scores differ by less than the engines' 1e-4 may come in either order).
    every = dict(zip(catalog["product_id"], probabilities(trained_model_dir, catalog.assign(query=query, label=0)), strict=True))
    assert found["scores"] == pytest.approx([every[i] for i in found["product_ids"]], abs=1e-4)
    assert found["scores"] == sorted(found["scores"], reverse=True)
    assert max(v for i, v in every.items() if i not in found["product_ids"]) <= min(found["scores"]) + 1e-4
    status, body = post(f"{server.url}/v1/models/{NAME}-search:predict", {"instances": [{"query": query}]})
    assert status == 200 and len(body["predictions"][0]["product_ids"]) == 10


def test_the_v2_protocol_reranks_and_searches(server, catalog):
    ids = catalog["product_id"][:3].tolist()
    status, body = post(f"{server.url}/v2/models/{NAME}/infer", {"inputs": [
        {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["drill"]},
        {"name": "product_id", "shape": [3], "datatype": "BYTES", "data": ids}]})
    assert status == 200, body
    (scores,) = body["outputs"]
    assert scores["name"] == "score" and scores["shape"] == [3]
    _, v1 = post(f"{server.url}/v1/models/{NAME}:predict",
                 {"instances": [{"query": "drill", "candidates": [{"product_id": i} for i in ids]}]})
    assert scores["data"] == pytest.approx(v1["predictions"][0]["scores"], abs=1e-6)
    status, body = post(f"{server.url}/v2/models/{NAME}-search/infer", {
        "inputs": [{"name": "query", "shape": [2], "datatype": "BYTES", "data": ["drill", "paint"]}], "parameters": {"top_k": 4}})
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["product_id"]["shape"] == outputs["score"]["shape"] == [2, 4]


def test_unknown_ids_without_text_are_a_400_naming_them(server):
    status, body = post(f"{server.url}/v1/models/{NAME}:predict",
                        {"instances": [{"query": "drill", "candidates": [{"product_id": "sku-404"}]}]})
    assert status == 400 and "'sku-404'" in body["error"] and "without product_text" in body["error"]


def test_metrics_count_requests_and_cache_hits(server):
    for _ in range(2):
        post(f"{server.url}/v1/models/{NAME}-search:predict", {"instances": [{"query": "metrics probe query"}]})
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'searchtune_text_cache_lookups_total{result="hit"}' in metrics
    assert f'request_predict_seconds_count{{model_name="{NAME}-search"}}' in metrics


@pytest.fixture(scope="module")
def cross_encoder_dir(splits_dir, tmp_path_factory) -> str:
    from searchtune.params import ModelParams, TrainParams
    from searchtune.steps import finetune, tokenize

    tokenized = str(tmp_path_factory.mktemp("cross-tokenized"))
    tokenize.tokenize(splits_dir, tokenized, ModelParams(architecture="cross-encoder", max_length=48))
    out = str(tmp_path_factory.mktemp("cross-model"))
    finetune.finetune(tokenized, out, TrainParams(architecture="cross-encoder", max_length=48, epochs=1,
                                                  max_train_rows=128, batch_size=32))
    return out


def test_a_cross_encoder_reranks_texts_and_says_why_it_cannot_search(cross_encoder_dir, splits_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    record = index_step.build_index(cross_encoder_dir, splits_dir, index_dir, threads=1)
    assert record.kind == "none" and "cross-encoder" in record.reason
    test = splits.read_split(splits_dir, "test").head(6)
    with LocalServer(["--model-dir", cross_encoder_dir, "--index-dir", index_dir, "--model-name", NAME],
                     str(tmp_path / "server.log")) as running:
        status, body = post(f"{running.url}/v1/models/{NAME}:predict",
                            {"instances": test[["query", "product_text"]].to_dict(orient="records")})
        assert status == 200
        assert body["predictions"] == pytest.approx(probabilities(cross_encoder_dir, test).tolist(), abs=1e-4)
        status, body = post(f"{running.url}/v1/models/{NAME}-search:predict", {"instances": [{"query": "drill"}]})
        assert status == 400 and "cross-encoder" in body["error"] and "product_text" in body["error"]
        status, body = post(f"{running.url}/v1/models/{NAME}:predict",
                            {"instances": [{"query": "drill", "candidates": [{"product_id": "100001"}]}]})
        assert status == 400 and "cross-encoder" in body["error"]


def test_a_registry_version_copied_as_kserve_does_is_verified_then_served(trained_model_dir, splits_dir, registry_root,
                                                                          tmp_path):
    """The storage initializer copies the version prefix (model, index/, MANIFEST.json) to /mnt/models."""
    import shutil

    from searchtune.errors import SearchtuneError
    from searchtune.io import storage
    from searchtune.registry import ModelRegistry

    staging = tmp_path / "staging"
    shutil.copytree(trained_model_dir, staging)
    index_step.build_index(trained_model_dir, splits_dir, str(staging / "index"), threads=1)
    manifest = ModelRegistry(registry_root).register_version("searchtune-relevance", str(staging), {"run_id": "serve-test"})
    assert any(entry["path"] == "index/index.faiss" for entry in manifest["files"])
    mounted = tmp_path / "mnt-models"
    storage.copy_tree(manifest["uri"], str(mounted))
    with LocalServer(["--model-dir", str(mounted), "--model-name", NAME], str(tmp_path / "server.log")) as running:
        status, body = post(f"{running.url}/v1/models/{NAME}-search:predict", {"instances": [{"query": "drill", "k": 3}]})
        assert status == 200 and len(body["predictions"][0]["product_ids"]) == 3
    index_file = mounted / "index" / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(SearchtuneError, match=r"index\.faiss: size or sha256 differs from .*MANIFEST\.json"):
        with LocalServer(["--model-dir", str(mounted), "--model-name", NAME], str(tmp_path / "corrupt.log"), ready_timeout=120):
            pass


def test_a_damaged_index_keeps_the_server_from_becoming_ready_even_with_no_verify(trained_model_dir, splits_dir, tmp_path):
    """Files are not trusted blindly: the server stops with one line instead of answering from shuffled ids."""
    import pandas as pd

    from searchtune.errors import SearchtuneError
    from searchtune.ml import vector_index

    index_dir = tmp_path / "index"
    index_step.build_index(trained_model_dir, splits_dir, str(index_dir), threads=1)
    ids = pd.read_parquet(index_dir / vector_index.IDS_FILE)
    ids.iloc[::-1].reset_index(drop=True).to_parquet(index_dir / vector_index.IDS_FILE, index=False)
    log = tmp_path / "server.log"
    with pytest.raises(SearchtuneError, match="did not become ready"):
        with LocalServer(["--model-dir", trained_model_dir, "--index-dir", str(index_dir), "--model-name", NAME,
                          "--no-verify"], str(log), ready_timeout=120):
            pass
    errors = [line for line in log.read_text().splitlines() if line.startswith("searchtune: error:")]
    assert len(errors) == 1 and "holds other ids, or the same ids in another order" in errors[0]
    assert "Traceback" not in log.read_text(), "no traceback, for the failure or for the readiness probes before it"
