"""The run parameters: each one declared once, here, with its type, default, meaning and valid range.

Everything else is derived from these classes: the KFP pipeline's inputs and their
descriptions in the UI's run form (``pipelines/retraining_pipeline.py`` takes its defaults
and docstring from ``RunParameters``), the flags of ``searchtune run``/``submit``
and their ``--help`` (``searchtune.cli.parameters``), the step functions' configuration
(each step takes its group: ``IngestParams``, ``TrainParams``, ``GateParams``) and the
lineage of a registered version. Tests check that the pipeline, the components and the
manifests agree with this module.

Why the parameter classes are the source rather than the pipeline function: the steps
must not import KFP, and users, tests and benchmarks that call a step function directly
must train and gate with exactly the defaults of ``searchtune run``.

Validation happens on construction (pydantic): ranges, finite numbers, choices and the
rules between fields. ``parse`` turns every problem into one line that names the
parameter, so a bad value is refused before any step runs.

Longer than 300 lines on purpose: every run parameter is declared here and nowhere else.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from searchtune.errors import SearchtuneError

Architecture = Literal["bi-encoder", "cross-encoder"]
ARCHITECTURES = get_args(Architecture)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# A registry reference (see ``ModelRegistry.resolve``): a version (3, v3), 'latest' or an alias; empty = none.
INIT_FROM_PATTERN = r"^(|v?[0-9]+|[A-Za-z][A-Za-z0-9._-]*)$"


class _Params(BaseModel):
    """Frozen, strict about unknown names, and never NaN or infinite."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)


class IngestParams(_Params):
    """Where the judgement logs are and how to read them (the ingest step)."""

    # The default "" is for ``searchtune run`` and direct calls of the steps, which then read the bundled
    # sample; the compiled pipeline declares ``data`` without a default, so a run on a cluster must name it.
    data: str = Field("", description="Input file, folder or glob of CSV/TSV/Parquet/JSONL files (also .gz), "
                                      "local or gs://. Required by a compiled or submitted pipeline; 'searchtune run' "
                                      "without it trains on the bundled synthetic sample (and says so).")
    query_column: str = Field("search_term", min_length=1, description="Column holding the search query.")
    text_columns: str = Field("product_title,brand", min_length=1,
                              description="Comma-separated product text columns, joined in this order (title,brand,...).")
    label_column: str = Field("relevance", min_length=1, description="Column holding the graded judgement or the 0/1 click.")
    positive_threshold: float = Field(2.5, description="A graded label at or above this is a positive (ignored with binary_labels).")
    binary_labels: bool = Field(False, description="The label is already 0/1 (clicks); positive_threshold is ignored.")
    label_min: float = Field(1.0, description="Smallest valid graded label; rows outside [label_min, label_max] are rejected.")
    label_max: float = Field(3.0, description="Largest valid graded label.")
    max_reject_ratio: float = Field(0.05, ge=0, le=1, description="Stop the run when a larger share of rows is rejected (0-1).")
    encoding: str = Field("auto", min_length=1, description="Text encoding of CSV/TSV/JSONL input. auto: UTF-8 (a byte-order "
                                                            "mark selects UTF-8/16/32) and a file with a line that is not UTF-8 "
                                                            "is refused, naming the line; a codec name (cp1252, latin-1, ...) "
                                                            "decodes the lines that are not UTF-8 with it (utf-16/utf-32: the "
                                                            "whole file). Characters are never replaced.")

    @property
    def text_column_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.text_columns.split(",") if c.strip())

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError("not a known text encoding (auto, utf-8, cp1252, latin-1, utf-16, ...)") from None
        return encoding

    @model_validator(mode="after")
    def _labels_make_sense(self) -> IngestParams:
        if not self.text_column_list:
            raise ValueError("text_columns names no column")
        if not self.binary_labels:
            if self.label_min >= self.label_max:
                raise ValueError(f"label_min {self.label_min:g} must be below label_max {self.label_max:g}")
            if not self.label_min < self.positive_threshold <= self.label_max:
                raise ValueError(f"positive_threshold {self.positive_threshold:g} must lie in "
                                 f"(label_min {self.label_min:g}, label_max {self.label_max:g}], or every row has one class")
        return self


class ModelParams(_Params):
    """Which pretrained model is tuned and how text becomes tokens (tokenize and fine-tune)."""

    base_model: str = Field("", description="Hugging Face model id or path of the pretrained encoder; "
                                            "empty = the bundled all-MiniLM-L6-v2.")
    architecture: Architecture = Field(
        "bi-encoder", description="bi-encoder (query and product embedded apart; product vectors precomputable) "
                                  "or cross-encoder (the pair in one sequence).")
    max_length: int = Field(64, ge=8, le=512, description="Token truncation length of each text (8-512).")


class TrainParams(ModelParams):
    """How the model is fine-tuned (the fine-tune step); saved with the model."""

    epochs: int = Field(3, ge=1, le=100, description="Maximum training epochs (early stopping may end sooner).")
    batch_size: int = Field(32, ge=1, le=65536, description="Rows per optimizer step.")
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Peak AdamW learning rate of the LoRA (or full) weights.")
    head_learning_rate: float = Field(1e-2, gt=0, le=1, description="Learning rate of the bi-encoder's scale and bias.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay of the encoder weights.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps with a linear learning-rate warm-up.")
    lora_r: int = Field(16, ge=0, le=1024, description="LoRA rank; 0 = full fine-tune (a much larger model).")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_targets: str = Field("query,key,value,dense", min_length=1,
                              description="Comma-separated module names that get LoRA adapters (BERT-like names by default).")
    patience: int = Field(1, ge=1, le=100, description="Epochs without validation-AUC gain before early stopping.")
    max_train_rows: int = Field(0, ge=0, description="Train on a seeded sample of this many rows; 0 = all.")
    seed: int = Field(13, ge=0, le=2**31 - 1, description="Random seed of sampling, batching and initialisation.")
    # Off by default: on Home Depot it did not beat 0/1 labels (validation AUC 0.724 vs 0.731 after one epoch).
    graded_targets: bool = Field(False, description="Train on the rescaled grade (a soft target) instead of the 0/1 label.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on GPU, fp32 on CPU.")
    checkpoint_every_steps: int = Field(500, ge=0, description="Checkpoint every this many steps (0 = only per epoch).")
    max_batch_tokens: int = Field(0, ge=0, le=16_777_216, description="Batch by token budget: each step takes as many rows "
                                  "as fit this many padded tokens (rows x longest row, e.g. 32768 on a GPU); batch_size is "
                                  "then unused. 0 = batch_size rows per step.")
    processes_per_node: int = Field(0, ge=0, le=64, description="Data-parallel training processes (torchrun, DDP) on the "
                                    "fine-tune node: 0 = one per visible GPU (one on CPU); each process takes its own share "
                                    "of every epoch's batches.")
    init_from: str = Field("", pattern=INIT_FROM_PATTERN,
                           description="Warm start: continue training this registered version of model_name instead of "
                                       "the base model: 'production', another alias, a version (3) or 'latest'; empty = "
                                       "from the base. 'production' before there is one trains from the base. The "
                                       "version must have this run's architecture, base model and LoRA settings.")

    @property
    def lora_target_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @model_validator(mode="after")
    def _budget_holds_a_row(self) -> TrainParams:
        if self.max_batch_tokens and self.max_batch_tokens < self.max_length:
            raise ValueError(f"max_batch_tokens {self.max_batch_tokens} must be 0 or at least max_length "
                             f"{self.max_length} (one row of the longest length)")
        return self


class GateParams(_Params):
    """When a candidate may replace the production model (the evaluate step's blessing).

    The rule and why each default is what it is: ``searchtune.steps.evaluation.gate`` and the README's
    "How the gate decides".
    """

    gate_metric: Literal["gauc", "roc_auc"] = Field(
        "gauc", description="Gate metric: gauc = AUC within each query, averaged over queries (search ranks within "
                            "a query); roc_auc = pooled ROC AUC over all rows.")
    min_auc: float = Field(0.55, ge=0, le=1, description="Gate: the candidate's gate metric must be at least this (0-1); "
                                                        "a floor against broken models, random is 0.5.")
    require_beat_base: bool = Field(True, description="Gate: the candidate must beat the untuned base model: the lower "
                                                      "bound of the difference's interval above 0.")
    require_beat_lexical: bool = Field(False, description="Gate: the candidate must beat the lexical baseline (character "
                                                          "TF-IDF cosine) the same way.")
    max_auc_drop: float = Field(0.01, ge=0, le=1, description="Gate, with a production model: the largest loss allowed, "
                                                              "the lower bound of (candidate - production) at least minus this.")
    require_improvement: bool = Field(False, description="Gate, with a production model: also require the lower bound of "
                                                         "(candidate - production) above min_auc_gain.")
    min_auc_gain: float = Field(0.0, ge=0, le=1, description="The improvement over production that require_improvement asks for.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of every interval the gate reads (two-sided).")
    min_test_queries: int = Field(30, ge=2, le=10_000_000, description="Fewer test queries behind the gate metric: "
                                                                       "not blessed (the intervals would not be reliable).")
    bootstrap_resamples: int = Field(1000, ge=1000, le=100_000, description="Query-clustered bootstrap resamples "
                                                                            "behind every interval.")


class IndexParams(_Params):
    """Which products the blessed model's vector index holds (the index step; served by ``searchtune serve``)."""

    catalog: str = Field("", description="Product catalog files (CSV/TSV/Parquet/JSONL; file, folder or glob; local or "
                                         "gs://) to index; empty = the distinct products of the training data.")
    catalog_id_column: str = Field("product_uid", min_length=1, description="The catalog's product id column.")
    catalog_text_columns: str = Field("", description="The catalog's product text columns, comma-separated; "
                                                      "empty = text_columns.")


class RegistryParams(_Params):
    """Where blessed models go (the register step) and where training checkpoints go."""

    registry_root: str = Field("", description="Model registry: a local folder or gs://bucket/prefix.")
    model_name: str = Field("searchtune-relevance", pattern=MODEL_NAME_PATTERN,
                            description="The model's name in the registry (letters, digits, '.', '_', '-').")
    checkpoint_root: str = Field("", description="Where training checkpoints go (local or gs://) so a preempted "
                                                 "pod resumes; empty = next to the model output when that is on GCS.")


class NotifyParams(_Params):
    """Who hears about the run's verdict (the notify step, the pipeline's exit handler).

    Not passed to the preflight step, so the URL never lands in ``run.json`` or in a registered
    version's lineage: a Slack webhook URL is a credential, and it decides nothing about the model.
    """

    notify_webhook: str = Field("", description="Webhook that gets the verdict, the reason and the report's location "
                                                "when the run ends, also when it failed (POST, Slack-compatible JSON "
                                                "{\"text\": ...}); empty = no notification. A failed post is logged "
                                                "and does not fail the run.")

    @field_validator("notify_webhook")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not re.match(r"^https?://[^\s/]+\S*$", url):
            raise ValueError("must be empty or an http:// or https:// URL")
        return url


# The bases are listed last-first so the fields come in pipeline order: ingest, model, train, gate, index, registry, notify.
class RunParameters(NotifyParams, RegistryParams, IndexParams, GateParams, TrainParams, IngestParams):
    """Every parameter of one pipeline run, in one flat object (the pipeline's inputs)."""

    def group(self, cls: type[_Params]) -> Any:
        """This run's values of one parameter group, e.g. ``run.group(TrainParams)``."""
        return cls(**{name: getattr(self, name) for name in cls.model_fields})


def parse(cls: type[_Params], values: dict, *, flag_style: bool = False) -> Any:
    """Build and validate a parameter object, turning every problem into one line.

    Args:
        cls: the parameter class (``RunParameters`` or one group).
        values: name -> value; names not given keep their defaults.
        flag_style: name parameters as CLI flags (``--min-auc``) instead of ``min_auc``.

    Raises:
        SearchtuneError: ``invalid parameters: min_auc=1.5: must be <= 1; ...``.
    """
    try:
        return cls(**values)
    except ValidationError as error:
        raise SearchtuneError("invalid parameters: " + "; ".join(_describe(e, values, flag_style) for e in error.errors())) from None


def _describe(error: dict, values: dict, flag_style: bool) -> str:
    message = _plain(error)
    if not error["loc"]:
        return message  # a rule between fields: its message names them
    name = str(error["loc"][0])
    shown = "--" + name.replace("_", "-") if flag_style else name
    if name in values:
        value = _show(values[name])
        return f"{shown} {value}: {message}" if flag_style else f"{shown}={value}: {message}"
    return f"{shown}: {message}"


def _show(value: Any) -> str:
    """A value as the user typed it: 1.5 and -1, not 1.5000 or -1.0; text quoted."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _plain(error: dict) -> str:
    """pydantic's message, shortened to what a user needs."""
    kind, message, context = error["type"], error["msg"], error.get("ctx") or {}
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(context.values()))
        return f"must be {bounds[kind]} {_show(limit) if isinstance(limit, float) else limit}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {context.get('expected', '')}"
    if kind == "extra_forbidden":
        return "is not a parameter"
    if kind == "string_pattern_mismatch" and error["loc"] and error["loc"][0] == "init_from":
        return "must be a registry version (3, v3), 'latest' or an alias such as 'production'"
    if kind == "string_pattern_mismatch":
        return "may only hold letters, digits, '.', '_' and '-' and must start with a letter or digit"
    if kind == "string_too_short":
        return "must not be empty"
    return re.sub(r"^Value error, ", "", message)


def descriptions(cls: type[_Params] = RunParameters) -> dict[str, str]:
    """Parameter name -> its one-line description."""
    return {name: field.description or "" for name, field in cls.model_fields.items()}


def defaults(cls: type[_Params] = RunParameters) -> dict[str, Any]:
    """Parameter name -> its default value."""
    return {name: field.default for name, field in cls.model_fields.items()}


def select(cls: type[_Params], values: dict) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``cls`` (a step's share of the run's parameters)."""
    return {name: values[name] for name in cls.model_fields if name in values}


def documented(summary: str, /, *groups: type[_Params], returns: str = "", **other_args: str):
    """Decorator: give a KFP component or pipeline function a Google-style docstring whose
    ``Args:`` describe the parameters of ``groups`` (from this module) and ``other_args``.

    KFP turns a function's ``Args:`` into the input descriptions of the UI, and dropping
    the decorator line from a component's source is what KFP does anyway, so the
    descriptions stay in one place without a copy in every component.
    """
    def decorate(func):
        lines = [summary, "", "Args:"]
        for cls in groups:
            lines += [f"    {name}: {text}" for name, text in descriptions(cls).items()]
        lines += [f"    {name}: {text}" for name, text in other_args.items()]
        if returns:
            lines += ["", "Returns:", f"    {returns}"]
        func.__doc__ = "\n".join(lines) + "\n"
        return func

    return decorate
