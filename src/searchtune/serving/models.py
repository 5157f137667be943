"""The two KServe models one server registers over the same loaded service.

* ``<name>``: rerank and pair scoring (v1 ``:predict``, v2 ``/infer``); what the stdlib
  server answered before, plus candidate lists by product id.
* ``<name>-search``: top-k products of the index for a query (v1 and v2).

Two models rather than an "op" field: each has its own URL, readiness, Prometheus
labels (``model_name``) and latency histograms, and a v1 client of the old server keeps
working unchanged against ``<name>``.
"""

from __future__ import annotations

import uuid

from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from searchtune.serving import protocol
from searchtune.serving.protocol import Candidate, PairInstance
from searchtune.serving.service import RelevanceService


def _tensor(name: str, datatype: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape}


class _ServiceModel(Model):
    """A KServe model that is ready exactly when the shared service has loaded."""

    def __init__(self, name: str, service: RelevanceService):
        super().__init__(name)
        self.service = service

    @property
    def ready(self) -> bool:
        return self.service.ready

    @ready.setter
    def ready(self, _value: bool) -> None:
        # KServe sets ready on start/stop; readiness here is the service's load state only.
        pass

    async def healthy(self) -> bool:
        return self.service.ready

    @staticmethod
    def _response(request: InferRequest, model_name: str, outputs: list[InferOutput]) -> InferResponse:
        return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=model_name, infer_outputs=outputs)


class RelevanceModel(_ServiceModel):
    """``<name>``: scores of (query, product) pairs and of candidate lists."""

    def get_input_types(self) -> list[dict]:
        return [_tensor("query", "BYTES", [-1]), _tensor("product_id", "BYTES", [-1]), _tensor("product_text", "BYTES", [-1])]

    def get_output_types(self) -> list[dict]:
        return [_tensor("score", "FP32", [-1])]

    async def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            items = protocol.parse_relevance_v2(payload)
            scores = [float(s) for result in await self.service.rerank(items) for s in result]
            return self._response(payload, self.name, [InferOutput("score", [len(scores)], "FP32", data=scores)])
        instances = protocol.parse_relevance_v1(payload)
        items = [(i.query, [Candidate(product_text=i.product_text)]) if isinstance(i, PairInstance) else (i.query, i.candidates)
                 for i in instances]
        results = await self.service.rerank(items)
        return {"predictions": [float(scores[0]) if isinstance(instance, PairInstance) else {"scores": scores.tolist()}
                                for instance, scores in zip(instances, results, strict=True)]}


class SearchModel(_ServiceModel):
    """``<name>-search``: the top-k products of the index for each query."""

    def get_input_types(self) -> list[dict]:
        return [_tensor("query", "BYTES", [-1])]

    def get_output_types(self) -> list[dict]:
        return [_tensor("product_id", "BYTES", [-1, -1]), _tensor("score", "FP32", [-1, -1])]

    async def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            queries, top_k = protocol.parse_search_v2(payload)
            results = await self.service.search(queries, top_k)
            width = max(len(ids) for ids, _ in results)
            # A fixed-shape tensor: a query with fewer hits (IVF) is padded with "" and score 0.
            ids = [pid for found, _ in results for pid in found + [""] * (width - len(found))]
            scores = [float(s) for _, found in results for s in list(found) + [0.0] * (width - len(found))]
            return self._response(payload, self.name, [
                InferOutput("product_id", [len(results), width], "BYTES", data=ids),
                InferOutput("score", [len(results), width], "FP32", data=scores)])
        instances = protocol.parse_search_v1(payload)
        results = await self.service.search([i.query for i in instances], max(i.k for i in instances))
        return {"predictions": [{"product_ids": ids[: i.k], "scores": scores[: i.k].tolist()}
                                for i, (ids, scores) in zip(instances, results, strict=True)]}
