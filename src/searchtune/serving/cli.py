"""``searchtune serve``: rerank and search with a model version on KServe's model server.

Registered by ``searchtune.cli.main``; the server itself is ``serving/server.py``.
"""

from __future__ import annotations

import argparse
import logging
import os

from searchtune.errors import SearchtuneError
from searchtune.registry import DEFAULT_REGISTRY, PRODUCTION
from searchtune.serving.protocol import MAX_TEXTS_PER_REQUEST

log = logging.getLogger(__name__)

DESCRIPTION = """\
Serve a model folder (from 'searchtune models pull', a registry version copied by KServe's
storage initializer, or a fine-tune output) with KServe's v1 and v2 protocols:

  searchtune serve --model @production     the local registry's production version (make serve)
  searchtune serve --model-dir ./model      a folder

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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="REF", help="a registered version: [<registry>/]<model>@<version|production|"
                                                       "latest>, or @production for the default model")
    source.add_argument("--model-dir", help="model folder (a pulled registry version or a fine-tune output)")
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry root for a --model REF that names none "
                                                                     "(default $SEARCHTUNE_REGISTRY or .searchtune/registry)")
    parser.add_argument("--pull-dir", default=".searchtune/served", help="where a version of a gs:// registry is pulled to "
                                                                         "(a local registry's version is served in place)")
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


def registered_model_dir(ref: str, registry_root: str, pull_dir: str) -> str:
    """The local folder of the version ``ref`` names: in place for a local registry, else pulled once.

    Raises:
        SearchtuneError: one line: no such version, or no production model yet and how to get one.
    """
    from searchtune.io import storage
    from searchtune.registry import parse_ref

    registry, model, version = parse_ref(ref, registry_root)
    if version == PRODUCTION and registry.alias(model, PRODUCTION) is None:
        raise SearchtuneError(f"no production model '{model}' in {registry.root} yet: `make run` registers one when the gate "
                              "blesses it; `searchtune run --no-require-beat-base` registers a candidate that does not "
                              "beat the untuned base (`searchtune models list` shows what is there)")
    number = registry.resolve(model, version)
    if not storage.is_gcs(registry.root):
        return registry.version_uri(model, number)
    dest = os.path.join(pull_dir, model, f"v{number}")
    if not os.path.isdir(dest):  # fetch leaves either the complete version or nothing
        registry.fetch(model, number, dest)
    return dest


def serve_command(args: argparse.Namespace) -> int:
    from searchtune.serving import server
    from searchtune.serving.service import RelevanceService, ServiceSettings, check_model_dir

    if args.model:
        args.model_dir = registered_model_dir(args.model, args.registry, args.pull_dir)
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
