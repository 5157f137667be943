"""``searchtune serve`` answers the KServe v1 protocol with the model's real scores."""

import json
import threading
import urllib.error
import urllib.request

import pytest

from searchtune import serve
from searchtune.ml import scoring
from searchtune.steps import ingest


@pytest.fixture(scope="module")
def server(trained_model_dir):
    scorer = serve.RelevanceScorer(trained_model_dir)
    httpd = serve.make_server(scorer, "relevance", "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", scorer
    httpd.shutdown()
    httpd.server_close()


def post(url: str, payload) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_predict_returns_the_models_probabilities(server, splits_dir):
    base, scorer = server
    with urllib.request.urlopen(f"{base}/v1/models/relevance", timeout=10) as response:
        assert json.loads(response.read()) == {"name": "relevance", "ready": True}
    test = ingest.read_split(splits_dir, "test").head(20)
    status, body = post(f"{base}/v1/models/relevance:predict",
                        {"instances": test[["query", "product_text"]].to_dict(orient="records")})
    assert status == 200 and len(body["predictions"]) == 20
    logits = scoring.score_frame(scorer.model, scorer.tokenizer, "bi-encoder", scorer.config["max_length"], test)
    expected = 1 / (1 + __import__("numpy").exp(-logits))
    assert body["predictions"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_bad_requests_get_a_400_that_says_what_is_wrong(server):
    base, _ = server
    status, body = post(f"{base}/v1/models/relevance:predict", {"rows": []})
    assert status == 400 and "instances" in body["error"]
    status, body = post(f"{base}/v1/models/relevance:predict", {"instances": [{"query": "drill"}]})
    assert status == 400 and "instance 0 needs non-empty 'query' and 'product_text'" == body["error"]
    status, _ = post(f"{base}/v1/models/other:predict", {"instances": [{"query": "a", "product_text": "b"}]})
    assert status == 404
