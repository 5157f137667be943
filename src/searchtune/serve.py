"""``searchtune serve``: score (query, product) pairs over HTTP with a registered model.

Speaks KServe's v1 inference protocol, so the InferenceService in ``manifests/`` can run
it as its predictor: ``GET /v1/models/<name>`` (readiness) and
``POST /v1/models/<name>:predict`` with ``{"instances": [{"query": ..., "product_text": ...}]}``
answering ``{"predictions": [probability, ...]}``. The model directory is what
``searchtune models pull`` leaves (adapter, tokenizer, searchtune_model.json).
"""

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd

from searchtune.ml import scoring

log = logging.getLogger(__name__)

MAX_INSTANCES = 1024


class RelevanceScorer:
    """A loaded model that turns (query, product_text) pairs into probabilities."""

    def __init__(self, model_dir: str):
        from searchtune.ml import modeling

        self.model, self.tokenizer, self.config = modeling.load_trained_model(model_dir)
        # torch modules are not safe to call from several request threads at once.
        self.lock = threading.Lock()

    def predict(self, instances: list) -> list[float]:

        frame = pd.DataFrame(
            {"query": [str(i["query"]) for i in instances], "product_text": [str(i["product_text"]) for i in instances],
             "label": np.zeros(len(instances), dtype=np.int8)}
        )
        with self.lock:
            logits = scoring.score_frame(self.model, self.tokenizer, self.config["architecture"], self.config["max_length"], frame)
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).round(6).tolist()


def validate_instances(body: dict) -> list:
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ValueError('expected {"instances": [{"query": "...", "product_text": "..."}, ...]}')
    if len(instances) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances per request, got {len(instances)}")
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or not instance.get("query") or not instance.get("product_text"):
            raise ValueError(f"instance {index} needs non-empty 'query' and 'product_text'")
    return instances


def make_server(scorer: RelevanceScorer, model_name: str, host: str, port: int) -> ThreadingHTTPServer:
    model_path = f"/v1/models/{model_name}"

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: HTTPStatus, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path in (model_path, "/"):
                self._reply(HTTPStatus.OK, {"name": model_name, "ready": True})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"unknown path {self.path}; try {model_path}"})

        def do_POST(self):  # noqa: N802
            if self.path != f"{model_path}:predict":
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"unknown path {self.path}; POST {model_path}:predict"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                instances = validate_instances(json.loads(self.rfile.read(length) or b"{}"))
            except (ValueError, json.JSONDecodeError) as error:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            self._reply(HTTPStatus.OK, {"predictions": scorer.predict(instances)})

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)


def add_parser(commands) -> None:
    parser = commands.add_parser("serve", help="serve a pulled model over HTTP (KServe v1 protocol)",
                                 description="Score (query, product_text) pairs with a model folder from `searchtune models pull`.")
    parser.add_argument("--model-dir", required=True, help="folder from `searchtune models pull`")
    parser.add_argument("--model-name", default="searchtune-relevance", help="name in the URL /v1/models/<name>")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.set_defaults(func=serve_command)


def serve_command(args) -> int:
    scorer = RelevanceScorer(args.model_dir)
    server = make_server(scorer, args.model_name, args.host, args.port)
    log.info("serving %s (%s) on http://%s:%d/v1/models/%s", args.model_dir, scorer.config["architecture"],
             args.host, args.port, args.model_name)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
