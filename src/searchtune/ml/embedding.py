"""A trained model loaded for inference: LoRA merged into the base weights, batched, no autograd.

Shared by the index step (embed the whole catalog once) and the model server (embed a
query per request, score pairs). The scores are the evaluation step's scores for the same
pairs (``ml.scoring.score_frame``) up to float rounding: the same tokens (truncated the
same way, see ``ml.tokens``), the same mean pooling and the same head; only the LoRA
update is folded into the weights once instead of being added on every forward pass.

Engines (bi-encoder embeddings): ``torch`` runs the merged model eagerly; ``onnx`` exports it
once at load (fp32, TorchScript exporter) and runs it with ONNX Runtime: the same vectors
(checked at load: at most 1e-5 apart on a padded probe batch) in about half the time for a
short query (5.2 ms vs 11.2 ms for 7 tokens on one core of the reference machine: ONNX
Runtime's kernels have less per-operator overhead at this size). ``auto`` picks ``onnx``
when ``onnx`` and ``onnxruntime`` are installed and the check passes, else ``torch``.
No int8 path: on the test model int8 dynamic quantization moved logits by up to 0.88.

A bi-encoder embeds each text apart, so product vectors can be computed ahead of time and
a pair's logit is ``scale * dot(query_vector, product_vector) + bias`` on unit vectors. A
cross-encoder reads the pair as one sequence: it has no product vectors and can only
score pairs (:meth:`TextEncoder.score_pairs`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.ml import modeling
from searchtune.ml.tokens import encode_pairs

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
ENGINES = ("auto", "torch", "onnx")
ONNX_TOLERANCE = 1e-5
# Files whose bytes decide what a model computes; their digest names the model an index was built with.
_FINGERPRINT_PARTS = (records.ADAPTER_DIR, records.HEAD_FILE, records.TOKENIZER_DIR, records.ModelRecord.FILE)


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the files that decide the model's outputs (adapter, head, tokenizer, record).

    An index records it, and the server refuses an index built with another model.

    Args:
        model_dir: a fine-tune output or a pulled registry version.

    Returns:
        The hex digest.
    """
    root = Path(model_dir)
    digest = hashlib.sha256()
    for part in _FINGERPRINT_PARTS:
        path = root / part
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count (process-wide); 0 means one per CPU core.

    Returns:
        The thread count now in force.
    """
    if threads < 0:
        raise SearchtuneError(f"thread count must be 0 (all cores) or more, got {threads}")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def _merge_lora(module: torch.nn.Module) -> torch.nn.Module:
    from peft import PeftModel

    return module.merge_and_unload() if isinstance(module, PeftModel) else module


class _EmbedModule(torch.nn.Module):
    def __init__(self, model: modeling.BiEncoder):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, attention_mask)


class OnnxEmbedder:
    """A bi-encoder's ``embed`` exported to ONNX (fp32) and run by ONNX Runtime.

    Args:
        model: the merged bi-encoder.
        threads: ONNX Runtime intra-op threads (0 = one per core).
    """

    def __init__(self, model: modeling.BiEncoder, threads: int):
        import onnxruntime

        example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
        axes = {0: "batch", 1: "tokens"}
        with tempfile.TemporaryDirectory(prefix="searchtune-onnx-") as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow it folded into constants
            path = os.path.join(folder, "embed.onnx")
            torch.onnx.export(_EmbedModule(model).eval(), example, path, input_names=["input_ids", "attention_mask"],
                              output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}})
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores: no busy waiting
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class TextEncoder:
    """A model folder loaded for inference.

    Args:
        model_dir: a fine-tune output or a pulled registry version (``adapter/``,
            ``head.safetensors``, ``tokenizer/``, ``searchtune_model.json``).
        threads: torch (and ONNX Runtime) intra-op threads (0 = one per core, None = leave torch's as is).
        batch_size: texts per forward pass when embedding many.
        engine: ``auto``, ``torch`` or ``onnx`` (see the module docstring).

    Attributes:
        record: the model's ``ModelRecord``.
        architecture: ``"bi-encoder"`` or ``"cross-encoder"``.
        scale, bias: the bi-encoder's head (logit = scale * cosine + bias).
        dimension: the embedding width (bi-encoder).
        fingerprint: :func:`model_fingerprint` of ``model_dir``.
        engine: the engine that embeds (``torch`` or ``onnx``).
    """

    def __init__(self, model_dir: str, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 engine: str = "auto"):
        if engine not in ENGINES:
            raise SearchtuneError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
        if threads is not None:
            set_threads(threads)
        model, self.tokenizer, self.record = modeling.load_trained_model(model_dir)
        if isinstance(model, modeling.BiEncoder):
            model.encoder = _merge_lora(model.encoder)
            self.scale, self.bias = float(model.scale.item()), float(model.bias.item())
            self.dimension = int(model.encoder.config.hidden_size)
        else:
            model.model = _merge_lora(model.model)
            self.scale, self.bias, self.dimension = 1.0, 0.0, 0
        self.model = model.eval()
        self.architecture = self.record.architecture
        self.max_length = int(self.record.max_length)
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.fingerprint = model_fingerprint(model_dir)
        self._onnx = None
        self.engine = "torch"
        if self.has_vectors and (engine == "onnx" or (engine == "auto" and _onnx_available())):
            self._use_onnx(threads or 0, required=engine == "onnx")
        log.info("loaded %s (%s, max_length %d, LoRA merged, engine %s, %d torch threads)", model_dir, self.architecture,
                 self.max_length, self.engine, torch.get_num_threads())

    def _use_onnx(self, threads: int, required: bool) -> None:
        """Switch embedding to ONNX Runtime if it gives the torch vectors on a padded probe batch."""
        probe = ["a", "cordless drill with two batteries and a charger", "paint | Behr"]
        expected = self.embed(probe)
        try:
            self._onnx = OnnxEmbedder(self.model, threads)
            difference = float(np.abs(self.embed(probe) - expected).max())
        except Exception as error:  # noqa: BLE001 - an export the exporter cannot do leaves the torch engine
            self._onnx, difference, problem = None, None, f"{type(error).__name__}: {str(error).splitlines()[0]}"
        else:
            problem = None if difference <= ONNX_TOLERANCE else f"its vectors differ by {difference:.2e}"
        if problem is None:
            self.engine = "onnx"
            return
        self._onnx = None
        if required:
            raise SearchtuneError(f"the ONNX Runtime engine cannot serve this model: {problem}")
        log.warning("embedding with torch: the ONNX Runtime engine failed its check (%s)", problem)

    @property
    def has_vectors(self) -> bool:
        """Whether texts have vectors of their own (bi-encoder) or only pairs have scores."""
        return self.architecture == "bi-encoder"

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # The tokenizer's own truncation keeps [CLS] ... [SEP] exactly as ml.tokens does for one text.
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def _padded(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask

    def _embed_batch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(ids, mask)
        return self.model.embed(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts`` (bi-encoder only), in input order.

        Texts are sorted by token length and batched so that padding stays small.

        Returns:
            A float32 array of shape ``(len(texts), dimension)``.

        Raises:
            SearchtuneError: the model is a cross-encoder (it has no text vectors).
        """
        if not self.has_vectors:
            raise SearchtuneError("a cross-encoder has no product vectors: it scores (query, product) pairs only")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not len(texts):
            return out
        sequences = self._ids(texts)
        order = np.argsort([-len(s) for s in sequences], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = self._embed_batch(*self._padded([sequences[i] for i in rows]))
        return out

    def logits_from_cosine(self, cosine: np.ndarray) -> np.ndarray:
        """The bi-encoder's logit for cosines between unit vectors, computed as the model does (float32)."""
        return (np.float32(self.scale) * np.asarray(cosine, dtype=np.float32) + np.float32(self.bias)).astype(np.float32)

    def score_pairs(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Logits of (query, product text) pairs, for either architecture.

        Returns:
            A float32 array of one logit per pair.
        """
        if len(queries) != len(texts):
            raise SearchtuneError(f"{len(queries)} queries but {len(texts)} product texts")
        if self.has_vectors:
            vectors = self.embed(list(queries) + list(texts))
            cosine = (vectors[: len(queries)] * vectors[len(queries) :]).sum(axis=1)
            return self.logits_from_cosine(cosine)
        columns, _ = encode_pairs(self.tokenizer, self.architecture, list(queries), list(texts), self.max_length)
        pair_ids, type_ids = columns["pair_ids"], columns["pair_type_ids"]
        out = np.empty(len(pair_ids), dtype=np.float32)
        order = np.argsort([-len(s) for s in pair_ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                ids, mask = self._padded([pair_ids[i] for i in rows])
                types, _ = self._padded([type_ids[i] for i in rows])
                types[mask == 0] = 0
                batch = {name: torch.from_numpy(array) for name, array in
                         (("pair_ids", ids), ("pair_mask", mask), ("pair_type_ids", types))}
                out[rows] = self.model(batch).float().numpy()
        return out
