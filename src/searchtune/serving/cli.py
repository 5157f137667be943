"""``searchtune serve``: rerank and search with a model version on KServe's model server.

Registered by ``searchtune.cli.main``; the server itself is ``serving/server.py``.
"""

from __future__ import annotations

import argparse
import logging

from searchtune.serving.protocol import MAX_TEXTS_PER_REQUEST

log = logging.getLogger(__name__)

DESCRIPTION = """\
Serve a model folder (from `searchtune models pull`, a registry version copied by KServe's
storage initializer, or a fine-tune output) with KServe's v1 and v2 protocols:

  POST /v1/models/<name>:predict          pairs {"query","product_text"} or rerank
                                          {"query","candidates":[{"product_id"|"product_text"}]}
  POST /v1/models/<name>-search:predict   {"instances":[{"query":"...","k":10}]}
  POST /v2/models/<name>[-search]/infer   tensors query, product_id, product_text -> score
  GET  /v2/health/ready, /v1/models/<name>   ready once the model and index are loaded
  GET  /metrics                           Prometheus

The product index is <model-dir>/index when present (the index step puts it there).
Details and curl examples: docs/serving.md.
"""


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def add_parser(commands) -> None:
    """Add ``serve`` to the ``searchtune`` command."""
    parser = commands.add_parser("serve", help="serve a model over HTTP (KServe v1/v2: rerank, search)",
                                 description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="model folder (registry version or fine-tune output)")
    parser.add_argument("--index-dir", default="", help="product index folder (default <model-dir>/index if present)")
    parser.add_argument("--model-name", default="searchtune-relevance", help="<name> in the URLs (search: <name>-search)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    tuning = parser.add_argument_group("model")
    tuning.add_argument("--threads", type=int, default=1, help="torch and FAISS threads per forward pass/search "
                                                                "(default 1: batching beats threads for short queries; 0 = one per core)")
    tuning.add_argument("--engine", choices=["auto", "torch", "onnx"], default="auto",
                        help="what embeds queries: onnx = ONNX Runtime (same vectors, about 2x faster for short "
                             "queries), torch, or auto = onnx when onnxruntime is installed (default)")
    tuning.add_argument("--cache-size", type=int, default=10_000, help="texts whose vectors stay cached (LRU; 0 = off)")
    tuning.add_argument("--nprobe", type=int, default=0, help="IVF cells searched per query (default: the one recorded "
                                                              "at build time for the recall target)")
    tuning.add_argument("--no-verify", action="store_true", help="skip checking files against MANIFEST.json at start")
    limits = parser.add_argument_group("limits (over a limit: 413/408/431/503, and the server keeps serving)")
    limits.add_argument("--max-body-bytes", type=_positive(int), default=1 << 20, help="request body limit (default 1 MiB)")
    limits.add_argument("--body-timeout", type=_positive(float), default=30.0, help="seconds to receive a body (default 30)")
    limits.add_argument("--header-timeout", type=_positive(float), default=10.0, help="seconds to receive the headers (default 10)")
    limits.add_argument("--max-connections", type=_positive(int), default=256, help="open connections (default 256)")
    limits.add_argument("--max-pending", type=_positive(int), default=64,
                        help="requests waiting for or in the model; more get 503 (default 64)")
    limits.add_argument("--max-batch-texts", type=_positive(int), default=256,
                        help=f"texts per forward pass (default 256; one request may still bring {MAX_TEXTS_PER_REQUEST})")
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from searchtune.serving import server
    from searchtune.serving.service import RelevanceService, ServiceSettings, check_model_dir

    check_model_dir(args.model_dir, args.index_dir)
    service = RelevanceService(ServiceSettings(
        model_dir=args.model_dir, index_dir=args.index_dir, threads=args.threads, cache_size=args.cache_size,
        max_pending=args.max_pending, max_batch_texts=args.max_batch_texts, nprobe=args.nprobe, verify=not args.no_verify,
        engine=args.engine))
    limits = server.HttpLimits(max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                               header_timeout=args.header_timeout, max_connections=args.max_connections)
    log.info("serving %s on http://%s:%d/v1/models/%s (and %s-search)", args.model_dir, args.host, args.port,
             args.model_name, args.model_name)
    server.serve(service, args.model_name, args.host, args.port, limits)
    return 0
