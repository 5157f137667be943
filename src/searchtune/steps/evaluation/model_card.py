"""The model card stored with each registered version (``model_card.md``).

Written by the evaluate step from its records, in the Hugging Face model card format
(``huggingface_hub.ModelCard``: YAML metadata with the evaluation results, then Markdown):
intended use, data, training, metrics with intervals, where the model is weaker, and
limitations. The register step copies it into the version next to the report.
"""

from __future__ import annotations

from pathlib import Path

from searchtune import records
from searchtune.steps.evaluation.summary import format_estimate, metrics_table_rows, slice_lines

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A search-relevance model trained by searchtune: it scores how relevant a product is to a
search query. Verdict of its evaluation: **{{ verdict }}**: {{ reason }}

## Intended use

Re-ranking or filtering the products retrieved for a shopper's query, on the catalog and
traffic it was trained on ({{ data_line }}). The score is a logit: the sigmoid gives the
probability that a rater judges the product relevant ({{ label_rule }}); the ranking within
a query is what the gate measured ({{ metric_label }}).

Not intended for other languages, catalogs or domains without re-evaluation, nor as the
only signal for decisions with consequences beyond ranking.

## Data

{{ data_lines }}

## Training

{{ training_line }}

## Evaluation (test split, {{ counts }})

Value [{{ confidence }} interval], {{ method }}.

{{ metrics_table }}

{{ differences_table }}

## Where it is weaker

{{ slice_text }}

## Limitations

- The intervals describe sampling noise on this test split only; they say nothing about
  traffic that differs from the training log (see drift: {{ drift }}).
- {{ calibration_note }}
- Judgements come from the raters or clicks behind the training log, with their noise and
  biases; no fairness or per-segment evaluation beyond the slices above was made.
- Full evaluation: `report.html` in this version (curves, calibration, per-query changes, slices).
"""


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render_model_card(evaluation: records.Evaluation, stats: records.IngestStats, model: records.ModelRecord,
                      slices: list, model_name: str = "searchtune-relevance", ece: float | None = None) -> str:
    """The model card as Markdown with YAML metadata.

    Args:
        evaluation: the evaluation record (verdict, statistics, drift).
        stats: the ingest record (data, label rule).
        model: the candidate's model record (training).
        slices: from ``report_analysis.slices``.
        model_name: the registered model's name.
        ece: the candidate's expected calibration error on the test split, if computed.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    blessing, statistics = evaluation.blessing, evaluation.blessing.statistics
    gate_metric = blessing.rule.gate_metric
    metric_label = statistics.metrics[gate_metric].label
    results = [EvalResult(task_type="text-ranking", dataset_type="search-judgements", dataset_name="test split",
                          dataset_split="test", metric_type=metric, metric_name=statistics.metrics[metric].label,
                          metric_value=round(estimate.value, 4))
               for metric, estimate in statistics.models.get(statistics.candidate, {}).items() if estimate.value is not None]
    base = model.base_model
    card_data = ModelCardData(model_name=model_name, library_name="peft", pipeline_tag="text-ranking",
                              tags=["searchtune", "search-relevance", model.architecture, "lora"], eval_results=results,
                              base_model=base.model_id)  # the Hub's field: a published id, never a local folder
    header, rows, differences = metrics_table_rows(statistics, evaluation.production_version)
    mapping = stats.column_mapping
    label_rule = ("a 0/1 label" if mapping.get("binary_labels") else
                  f"relevant = grade >= {mapping.get('positive_threshold')} on [{mapping.get('label_min')}, {mapping.get('label_max')}]")
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE,
        title=f"{model_name} ({blessing.candidate_id or 'local run'})",
        verdict="BLESSED" if blessing.blessed else "NOT BLESSED", reason=blessing.reason,
        data_line=f"{stats.rows_kept} judgements from {len(stats.sources)} file(s)", label_rule=label_rule,
        metric_label=f"{metric_label} {format_estimate(blessing.gate_estimate())}",
        data_lines="\n".join([f"- sources: {', '.join(f'`{s}`' for s in stats.sources)} (fingerprint `{stats.fingerprint[:16]}`)",
                              f"- {stats.rows_read} rows read, {stats.rows_rejected} rejected, "
                              f"{stats.duplicates_dropped} duplicates dropped; label: {label_rule}",
                              *[f"- {name}: {s.rows} rows, {s.queries} queries, positive rate {s.positive_rate:.3f}"
                                for name, s in stats.splits.items()],
                              "- splits by query hash: no query is in two splits"]),
        training_line=(f"{model.architecture} on `{base.label()}`, LoRA r={model.lora_r}, "
                       f"{model.train_rows} training rows, best epoch {model.best_epoch} of {len(model.epochs)} (validation "
                       f"AUC {model.best_validation_auc if model.best_validation_auc is None else round(model.best_validation_auc, 4)}), "
                       f"{model.training_seconds:g} s on {model.device}; parameters: "
                       + ", ".join(f"{k}={v}" for k, v in sorted(model.training.items()) if k in _TRAINING_SHOWN)),
        counts=f"{statistics.counts.rows} rows, {statistics.counts.queries} queries",
        confidence=f"{statistics.confidence:.0%}", method=statistics.method,
        metrics_table=_markdown_table(header, rows), differences_table=_markdown_table(differences[0], differences[1:]),
        slice_text="\n".join(slice_lines(slices, evaluation.production_version)) or "- no slices computed",
        drift=evaluation.drift.headline or evaluation.drift.status,
        calibration_note=("Calibration was not measured." if ece is None else
                          f"Expected calibration error of the probabilities on the test split: {ece:.3f}."),
    )
    return str(card)


_TRAINING_SHOWN = {"epochs", "batch_size", "learning_rate", "lora_r", "lora_alpha", "max_length", "max_train_rows", "seed"}


def write_model_card(folder: Path, *args, **kwargs) -> Path:
    """``render_model_card(*args, **kwargs)`` written to ``<folder>/model_card.md``."""
    path = Path(folder) / records.MODEL_CARD_FILE
    path.write_text(render_model_card(*args, **kwargs), encoding="utf-8")
    return path

