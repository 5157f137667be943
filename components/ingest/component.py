"""KFP component for the ingest step; the logic is ``searchtune.steps.ingest.ingest``."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from searchtune.orchestration.images import CPU_IMAGE
from searchtune.params import IngestParams, documented


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
@documented(
    "Read judgement logs, quarantine bad rows and split by query.",
    IngestParams,
    data_version="the preflight step's digest of the input files: part of this step's cache key, so new data "
                 "behind an unchanged location is read again and unchanged data is not.",
    min_test_queries="the gate's min_test_queries: a test split with fewer queries stops the run here, before "
                     "training, since the gate could never bless a model trained on this data.",
    splits="train/validation/test Parquet files and stats.json.",
    rejects="rejected rows with the reason for each.",
    metrics="row counts and per-split positive rates.",
)
def ingest(
    data: str,
    query_column: str,
    text_columns: str,
    label_column: str,
    positive_threshold: float,
    binary_labels: bool,
    label_min: float,
    label_max: float,
    max_reject_ratio: float,
    encoding: str,
    data_version: str,
    min_test_queries: int,
    splits: Output[Dataset],
    rejects: Output[Dataset],
    metrics: Output[Metrics],
):
    import os

    from searchtune import logs, params, records
    from searchtune.steps import ingest as step

    with logs.component_step("ingest"):
        config = params.parse(params.IngestParams, params.select(params.IngestParams, locals()))
        os.makedirs(rejects.path, exist_ok=True)
        stats = step.ingest(splits.path, config, rejects_path=os.path.join(rejects.path, records.REJECTS_FILE),
                            min_test_queries=min_test_queries)
        splits.metadata.update({"fingerprint": stats.fingerprint, "rows": stats.rows_kept, "data_version": data_version})
        rejects.metadata["rows"] = stats.rows_rejected
        for name in ("rows_read", "rows_rejected", "duplicates_dropped", "rows_kept", "lines_decoded_with_fallback"):
            metrics.log_metric(name, getattr(stats, name))
        for split, split_stats in stats.splits.items():
            metrics.log_metric(f"{split}_rows", split_stats.rows)
            metrics.log_metric(f"{split}_queries", split_stats.queries)
            metrics.log_metric(f"{split}_positive_rate", split_stats.positive_rate)
