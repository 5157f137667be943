"""KFP component for the index step; the logic is ``searchtune.steps.index.build_index``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def index(
    model: Input[Model],
    splits: Input[Dataset],
    catalog: str,
    catalog_id_column: str,
    catalog_text_columns: str,
    text_columns: str,
    product_index: Output[Artifact],
    metrics: Output[Metrics],
):
    """Embed the product catalog with the blessed model and build its FAISS index.

    Args:
        model: output of the fine-tune step (the blessed model).
        splits: output of the ingest step: the default catalog (its distinct product texts)
            and real queries for the recall check of an IVF index.
        catalog: catalog files (CSV/TSV, Parquet, JSONL; a file, folder or glob; local or gs://);
            '' = the run's data, ids from catalog_id_column (sha256(product_text)[:16] if it lacks it).
        catalog_id_column: the catalog's product id column.
        catalog_text_columns: the catalog's product text columns, comma-separated, joined as the
            ingest step joins them; '' = text_columns.
        text_columns: the run's product text columns (the default of catalog_text_columns).
        product_index: index.json (kind, parameters, recall, model fingerprint, catalog counts),
            index.faiss and ids.parquet; the register step stores it as the version's index/.
        metrics: products indexed, embedding throughput, build time, recall@10 (IVF).
    """
    from searchtune import logs
    from searchtune.steps import index as step

    with logs.component_step("index"):
        record = step.build_index(model.path, splits.path, product_index.path, catalog=catalog,
                                  id_column=catalog_id_column, text_columns=catalog_text_columns or text_columns)
        product_index.metadata.update({"kind": record.kind, "products": record.count, "nprobe": record.nprobe,
                                       "model_fingerprint": record.model_fingerprint})
        metrics.log_metric("products", record.count)
        metrics.log_metric("build_seconds", record.build_seconds)
        if record.embedding:
            metrics.log_metric("texts_per_second", record.embedding["texts_per_second"])
        if record.recall_at_10 is not None:
            metrics.log_metric("recall_at_10", record.recall_at_10)
