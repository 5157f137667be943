"""Request validation: every field typed and bounded, every refusal one line saying what is wrong.

Strict types (pydantic strict mode): a number where a string belongs is refused, not
turned into ``"3"`` and scored. Sizes are bounded so one request cannot occupy the model
for long: instances per request, candidates per query, characters per text, top-k.

Shapes (``docs/serving.md`` has examples):

* ``<name>`` v1 ``{"instances": [...]}``, each instance either a pair
  ``{"query", "product_text"}`` (answered with a probability, as before) or a rerank
  ``{"query", "candidates": [{"product_id"?, "product_text"?}, ...]}`` (answered with
  ``{"scores": [...]}`` in the candidates' order).
* ``<name>-search`` v1 ``{"instances": [{"query", "k"?}]}`` answered with
  ``{"product_ids": [...], "scores": [...]}``, best first.
* v2 (open inference protocol) tensors: ``query``, ``product_id``, ``product_text``
  (BYTES) in, ``score`` (FP32) out; search takes ``query`` and the parameter ``top_k``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

MAX_INSTANCES = 1024
MAX_CANDIDATES = 1000
MAX_TEXTS_PER_REQUEST = 2048
MAX_TEXT_CHARS = 4096
MAX_ID_CHARS = 256
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10

Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
ProductId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]


class BadRequest(ValueError):
    """The request is malformed or asks for something impossible (HTTP 400); the message says why."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Candidate(_Strict):
    """A product to score: an id the index holds and/or its text."""

    product_id: ProductId | None = None
    product_text: Text | None = None

    @model_validator(mode="after")
    def _named_somehow(self) -> Candidate:
        if self.product_id is None and self.product_text is None:
            raise ValueError("a candidate needs a product_id or a product_text")
        return self


class PairInstance(_Strict):
    query: Text
    product_text: Text


class RerankInstance(_Strict):
    query: Text
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=MAX_CANDIDATES)]


class SearchInstance(_Strict):
    query: Text
    k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _instances(body: Any, example: str) -> list:
    if not isinstance(body, dict) or set(body) - {"instances"} or not isinstance(body.get("instances"), list):
        raise BadRequest(f'expected a JSON object {{"instances": [{example}, ...]}}')
    instances = body["instances"]
    if not 1 <= len(instances) <= MAX_INSTANCES:
        raise BadRequest(f"expected 1 to {MAX_INSTANCES} instances, got {len(instances)}")
    return instances


def parse_relevance_v1(body: Any) -> list[PairInstance | RerankInstance]:
    """The instances of a v1 request to ``<name>`` (pairs and/or rerank lists).

    Raises:
        BadRequest: naming the first problem (``instance 2: candidates.0.product_id: ...``).
    """
    parsed = []
    for number, instance in enumerate(_instances(body, '{"query": "...", "product_text": "..."}')):
        kind = RerankInstance if isinstance(instance, dict) and "candidates" in instance else PairInstance
        try:
            parsed.append(kind.model_validate(instance))
        except ValidationError as error:
            raise BadRequest(f"instance {number}: {_problem(error)}") from None
    texts = sum(len(i.candidates) if isinstance(i, RerankInstance) else 1 for i in parsed)
    if texts > MAX_TEXTS_PER_REQUEST:
        raise BadRequest(f"at most {MAX_TEXTS_PER_REQUEST} products per request, got {texts}")
    return parsed


def parse_search_v1(body: Any) -> list[SearchInstance]:
    """The instances of a v1 request to ``<name>-search``."""
    parsed = []
    for number, instance in enumerate(_instances(body, '{"query": "...", "k": 10}')):
        try:
            parsed.append(SearchInstance.model_validate(instance))
        except ValidationError as error:
            raise BadRequest(f"instance {number}: {_problem(error)}") from None
    return parsed


def _bytes_tensor(request, name: str, required: bool) -> list[str] | None:
    tensor = next((t for t in request.inputs if t.name == name), None)
    if tensor is None:
        if required:
            raise BadRequest(f"input tensor '{name}' is missing (BYTES)")
        return None
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input '{name}' must be BYTES, got {tensor.datatype}")
    data = tensor.data
    if not isinstance(data, list) or len(tensor.shape) != 1 or tensor.shape[0] != len(data):
        raise BadRequest(f"input '{name}' must be a 1-d list of strings matching its shape {tensor.shape}")
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
    if not all(isinstance(v, str) and len(v) <= MAX_TEXT_CHARS for v in values):
        raise BadRequest(f"input '{name}' must hold strings of at most {MAX_TEXT_CHARS} characters")
    return values


def parse_relevance_v2(request) -> list[tuple[str, list[Candidate]]]:
    """The ``(query, candidates)`` items of a v2 request: ``query`` has one entry (shared) or one per candidate.

    An empty string in ``product_id`` or ``product_text`` means "not given" for that row.
    """
    queries = _bytes_tensor(request, "query", required=True)
    ids = _bytes_tensor(request, "product_id", required=False)
    texts = _bytes_tensor(request, "product_text", required=False)
    if ids is None and texts is None:
        raise BadRequest("give the candidates as input 'product_id' and/or 'product_text' (BYTES)")
    size = len(ids if ids is not None else texts)
    if ids is not None and texts is not None and len(ids) != len(texts):
        raise BadRequest(f"'product_id' has {len(ids)} entries but 'product_text' has {len(texts)}")
    if not 1 <= size <= MAX_TEXTS_PER_REQUEST:
        raise BadRequest(f"expected 1 to {MAX_TEXTS_PER_REQUEST} candidates, got {size}")
    if len(queries) not in (1, size) or not all(queries):
        raise BadRequest(f"'query' needs 1 non-empty entry or one per candidate ({size}), got {len(queries)}")
    candidates = []
    for row in range(size):
        try:
            candidates.append(Candidate(product_id=(ids[row] or None) if ids else None,
                                        product_text=(texts[row] or None) if texts else None))
        except ValidationError as error:
            raise BadRequest(f"candidate {row}: {_problem(error)}") from None
    if len(queries) == 1:
        return [(queries[0], candidates)]
    return [(query, [candidate]) for query, candidate in zip(queries, candidates, strict=True)]


def parse_search_v2(request) -> tuple[list[str], int]:
    """``(queries, top_k)`` of a v2 search request; ``top_k`` is a request parameter (default 10)."""
    queries = _bytes_tensor(request, "query", required=True)
    if not 1 <= len(queries) <= MAX_INSTANCES or not all(queries):
        raise BadRequest(f"'query' needs 1 to {MAX_INSTANCES} non-empty strings")
    top_k = (request.parameters or {}).get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BadRequest(f"parameter 'top_k' must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}")
    return queries, top_k
