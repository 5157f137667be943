"""What crosses a step boundary: every file name, and a typed record for every JSON file.

A step writes its record with ``record.write(folder)`` and returns it; the next step (or
the KFP component around the step, or the CLI) reads it back with ``Record.read(folder)``.
Reading validates the content, so a missing key or a wrong type is one clear error at
the boundary instead of a ``KeyError`` three modules later. The file names below are the
only place they are spelled. Over 300 lines on purpose: one module holding every contract
(as TFX's standard artifacts do) is what lets a reader see all of them in one place.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from searchtune.errors import SearchtuneError
from searchtune.params import GateParams

# --- files that are not JSON records ---------------------------------------------------
SPLITS = ("train", "validation", "test")
REJECTS_FILE = "rejects.parquet"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
REFERENCE_SAMPLE_FILE = "reference_sample.parquet"
CHAMPION_MODEL_DIR = "model"
DRIFT_HTML_FILE = "drift_report.html"
DRIFT_JSON_FILE = "drift_report.json"
SUMMARY_FILE = "summary.md"
PREDICTIONS_FILE = "predictions.parquet"
INDEX_DIR = "index"  # the product vector index inside a registered version
INDEX_VECTORS_FILE = "index.faiss"  # inside the index folder: the faiss index of the product vectors
INDEX_IDS_FILE = "ids.parquet"  # inside the index folder: the product id of each vector, in index order
MANIFEST_FILE = "MANIFEST.json"  # a registered version's file list (size, sha256), written last


def split_file(split: str) -> str:
    """The ingest step's file of one split."""
    return f"{split}.parquet"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Record(BaseModel):
    """A JSON file with a fixed name inside a step's output folder."""

    FILE: ClassVar[str]
    # Unknown keys are ignored so a newer run can read what an older one registered.
    model_config = ConfigDict(extra="ignore")

    @classmethod
    def path(cls, folder: str) -> str:
        return os.path.join(folder, cls.FILE)

    def write(self, folder: str) -> str:
        """Write the record as ``<folder>/<FILE>`` (atomically) and return the path."""
        os.makedirs(folder, exist_ok=True)
        path = self.path(folder)
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")
        os.replace(temp, path)
        return path

    @classmethod
    def read(cls, folder: str):
        """Read ``<folder>/<FILE>``.

        Raises:
            SearchtuneError: the file is missing or does not hold this record.
        """
        path = cls.path(folder)
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.model_validate_json(handle.read())
        except FileNotFoundError:
            raise SearchtuneError(f"{path}: missing") from None
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors()[:3])
            raise SearchtuneError(f"{path}: not a valid {cls.__name__} record ({problems})") from None

    @classmethod
    def from_bytes(cls, data: bytes, where: str):
        """Parse a record read from elsewhere (a registry object), naming ``where`` on error."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            raise SearchtuneError(f"{where}: not a valid {cls.__name__} record ({error.errors()[0]['msg']})") from None


# --- preflight --------------------------------------------------------------------------
class DataFile(BaseModel):
    uri: str
    size: int
    version: str  # GCS generation, or the local file's mtime in ns: changes whenever the content can have


class WarmStart(BaseModel):
    """The registered version a model continued training from (``init_from``, resolved by preflight)."""

    model_name: str
    version: int
    uri: str


class RunRecord(Record):
    """What the preflight step checked and fixed for this run: parameters, inputs, registry."""

    FILE: ClassVar[str] = "run.json"
    run_id: str
    started_at: str
    parameters: dict[str, Any]
    data_files: list[DataFile]
    data_version: str  # digest of data_files: the content key of the ingest step
    base_model: str
    registry_root: str
    code: dict[str, Any]
    warm_start: WarmStart | None = None  # init_from resolved to a version; None = from the base model


# --- ingest -----------------------------------------------------------------------------
class SplitStats(BaseModel):
    rows: int
    queries: int
    positive_rate: float


class IngestStats(Record):
    FILE: ClassVar[str] = "stats.json"
    fingerprint: str
    sources: list[str]
    column_mapping: dict[str, Any]
    split_fractions: dict[str, float]
    rows_read: int
    rows_rejected: int
    rejects_by_reason: dict[str, int] = {}
    duplicates_dropped: int
    rows_kept: int
    splits: dict[str, SplitStats]
    encodings: dict[str, str] = {}  # input file -> how its text was decoded
    lines_decoded_with_fallback: int = 0  # lines that were not UTF-8, decoded with the declared encoding


# --- tokenize ---------------------------------------------------------------------------
class TokenizeStats(Record):
    FILE: ClassVar[str] = "tokenize_stats.json"
    architecture: str
    max_length: int
    tokenizer: str
    splits: dict[str, dict[str, Any]]


# --- fine-tune --------------------------------------------------------------------------
class BaseModelRef(BaseModel):
    """The pretrained encoder a model was trained from: what was loaded, its published identity, its bytes."""

    name_or_path: str  # as loaded: a Hugging Face id, or a folder (the bundled model is a folder in site-packages)
    model_id: str | None = None  # the published Hugging Face id, where known
    revision: str | None = None  # the hub commit of the files, or the package that ships them
    sha256: str | None = None  # of the weight files, in name order
    weight_files: list[str] = []
    bundled: bool = False

    def label(self) -> str:
        """How a reader should see it: published id, revision, checksum (never a virtualenv path when an id is known)."""
        details = [f"revision {self.revision}"] if self.revision else []
        details += [f"sha256 {self.sha256[:12]}"] if self.sha256 else []
        name = self.model_id or self.name_or_path
        return f"{name} ({', '.join(details)})" if details else name


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    validation_auc: float | None
    examples_per_second: float
    seconds: float
    padding_efficiency: float


class ModelRecord(Record):
    """How a model was made; saved with it (``searchtune_model.json``) and read to load it."""

    FILE: ClassVar[str] = "searchtune_model.json"
    architecture: str
    base_model: BaseModelRef
    max_length: int
    lora_r: int = 16
    training: dict[str, Any]  # the TrainParams it was trained with
    warm_start: WarmStart | None = None  # the version training continued from; None = from the base model
    device: str = "cpu"
    train_rows: int = 0
    epochs: list[EpochRecord] = []
    best_epoch: int = 0
    best_validation_auc: float | None = None
    training_seconds: float = 0.0


# --- champion (the production model, resolved before evaluation) --------------------------
class ChampionRecord(Record):
    FILE: ClassVar[str] = "champion.json"
    found: bool
    model_name: str
    registry_root: str
    version: int | None = None
    uri: str | None = None
    run_id: str | None = None
    recorded_auc: float | None = None
    # Set when a production model exists but could not be fetched: evaluation fails closed.
    error: str | None = None
    reference_rows: int = 0


# --- evaluate ---------------------------------------------------------------------------
# The test-set statistics (``searchtune.ml.stats.compute_statistics``): the one thing the gate reads.


class Estimate(BaseModel):
    """One model's value of one metric and its interval (None: not computable)."""

    value: float | None
    low: float | None
    high: float | None


class Difference(BaseModel):
    """Candidate minus another model on one metric, paired over the same resamples."""

    difference: float | None
    low: float | None
    high: float | None
    share_candidate_worse: float | None


class MetricInfo(BaseModel):
    """What a metric is, which way is better, what it averages over, and its random floor."""

    label: str
    higher_is_better: bool
    averaged_over: str
    interval: str
    random_floor: float | None


class Counts(BaseModel):
    """What the test split holds; ``queries_with_graded_gains`` are those nDCG can score."""

    rows: int
    positives: int
    queries: int
    queries_with_both_classes: int
    queries_with_graded_gains: int


class StatsResult(BaseModel):
    """Everything the gate and the reviewer need; ``model_dump()`` is plain JSON."""

    candidate: str
    confidence: float
    resamples: int
    seed: int
    method: str
    counts: Counts
    metrics: dict[str, MetricInfo]
    models: dict[str, dict[str, Estimate]]
    comparisons: dict[str, dict[str, Difference]]
    unscored: dict[str, str]
    seconds: float

    def estimate(self, model: str, metric: str) -> Estimate | None:
        """The model's estimate, or None when the model or the metric is absent."""
        return self.models.get(model, {}).get(metric)

    def difference(self, other: str, metric: str) -> Difference | None:
        """Candidate minus ``other``, or None when either is absent."""
        return self.comparisons.get(other, {}).get(metric)


REPORT_FILE = "report.html"  # the self-contained evaluation report (steps/evaluation/report.py)
MODEL_CARD_FILE = "model_card.md"  # written by evaluate, stored with a registered version


class DriftSummary(BaseModel):
    """Has the data changed since production was trained (``searchtune.steps.evaluation.drift``)."""

    reference: str
    current: str
    drifted_columns: list[str]
    columns: int
    share_drifted: float
    per_column: dict[str, Any] = {}  # signal -> score, threshold, method, drifted, meaning, reference/current summary
    reference_rows: int
    current_rows: int
    # no_reference: nothing to compare with (first model), no alarm; drifted: a signal reached its threshold.
    status: Literal["no_reference", "stable", "drifted"] = "stable"
    headline: str = ""
    scored_rows: int = 0  # rows per side the production model scored (prediction drift); 0 = not compared


class Clause(BaseModel):
    """One clause of the gate's rule, with the numbers it used."""

    name: str
    status: Literal["passed", "failed", "skipped"]
    text: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    share_candidate_worse: float | None = None


class Blessing(Record):
    """The gate's verdict (TFX's blessing): what was decided, why, on which numbers, by which rule."""

    FILE: ClassVar[str] = "blessing.json"
    blessed: bool
    reason: str
    decided_by: str  # the first failed clause, or "all"
    clauses: list[Clause]
    rule: GateParams
    statistics: StatsResult
    candidate_id: str = ""
    production_version: int | None = None
    decided_at: str

    def gate_estimate(self):
        """The candidate's gate metric: value and interval (None if it could not be computed)."""
        return self.statistics.estimate(self.statistics.candidate, self.rule.gate_metric)


class Evaluation(Record):
    FILE: ClassVar[str] = "evaluation.json"
    test_rows: int
    test_queries: int
    production_version: int | None = None
    drift: DriftSummary
    roc_curve: dict[str, list[float]]
    confusion_matrix: dict[str, Any]
    blessing: Blessing
    model: dict[str, Any]


# --- index ------------------------------------------------------------------------------
class IndexRecord(Record):
    """``index.json``: what an index holds and how it was built."""

    FILE: ClassVar[str] = "index.json"
    format: int = 1
    kind: Literal["flat-ip", "ivf-flat", "none"]
    reason: str = ""  # why there is no index (kind "none")
    count: int = 0
    dimension: int = 0
    metric: str = "inner_product"
    normalized: bool = True
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    recall_at_10: float | None = None
    recall_probes: str = ""
    build_seconds: float = 0.0
    faiss_version: str = ""
    ids_sha256: str = ""  # of the ids in row order: a reordered or swapped ids file is refused when served
    model_fingerprint: str = ""
    architecture: str = ""
    max_length: int = 0
    embedding: dict = {}
    catalog: dict = {}
    created_at: str = ""


# --- register ---------------------------------------------------------------------------
class Lineage(Record):
    """Where a registered version came from: every parameter, the data, the base model, the verdict."""

    FILE: ClassVar[str] = "lineage.json"
    run_id: str
    created_at: str
    parameters: dict[str, Any]
    data: dict[str, Any]
    base_model: BaseModelRef
    warm_start: WarmStart | None = None
    blessing: Blessing
    reference_sample_rows: int
    code: dict[str, Any]


class Registration(Record):
    FILE: ClassVar[str] = "registration.json"
    model: str
    version: int
    promoted: bool
    reason: str
    alias_before: int | None
    alias_after: int | None
    registry_uri: str


def dumps(record: BaseModel) -> str:
    """A record as compact JSON (for KFP metadata and logs)."""
    return json.dumps(record.model_dump(mode="json"), separators=(",", ":"))
