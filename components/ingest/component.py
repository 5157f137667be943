"""KFP component for the ingest step; the logic is ``searchtune.ingest.ingest``."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
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
    splits: Output[Dataset],
    rejects: Output[Dataset],
    metrics: Output[Metrics],
):
    """Read judgement logs, quarantine bad rows and split by query.

    Args:
        data: file, folder or glob of CSV/Parquet/JSONL files (local or gs://); '' = the bundled sample.
        query_column: column holding the search query.
        text_columns: comma-separated product text columns, joined in this order.
        label_column: column holding the graded judgement or the 0/1 click.
        positive_threshold: graded labels >= this are positive.
        binary_labels: the label is already 0/1 (clicks); positive_threshold is ignored.
        label_min: smallest valid graded label.
        label_max: largest valid graded label.
        max_reject_ratio: fail when a larger share of rows is rejected.
        splits: train/validation/test Parquet files and stats.json.
        rejects: rejected rows with the reason for each.
        metrics: row counts and per-split positive rates.
    """
    import os

    from searchtune import logs
    from searchtune.data import sample_data
    from searchtune.steps import ingest as step

    with logs.component_step("ingest"):
        mapping = step.ColumnMapping(
            query=query_column,
            text=tuple(c.strip() for c in text_columns.split(",") if c.strip()),
            label=label_column,
            positive_threshold=None if binary_labels else positive_threshold,
            label_min=label_min,
            label_max=label_max,
        )
        os.makedirs(rejects.path, exist_ok=True)
        stats = step.ingest(
            data or sample_data.default_sample_path(), splits.path, mapping, max_reject_ratio,
            rejects_path=os.path.join(rejects.path, "rejects.parquet"),
        )
        splits.metadata.update({"fingerprint": stats["fingerprint"], "rows": stats["rows_kept"]})
        rejects.metadata["rows"] = stats["rows_rejected"]
        for name in ("rows_read", "rows_rejected", "duplicates_dropped", "rows_kept"):
            metrics.log_metric(name, stats[name])
        for split, split_stats in stats["splits"].items():
            metrics.log_metric(f"{split}_rows", split_stats["rows"])
            metrics.log_metric(f"{split}_queries", split_stats["queries"])
            metrics.log_metric(f"{split}_positive_rate", split_stats["positive_rate"])
