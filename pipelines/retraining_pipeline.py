"""The retraining DAG: preflight -> ingest -> tokenize -> fine-tune -> champion -> evaluate -> register if blessed,
else record the refusal; then, however the run ended, notify (the exit handler).

Each step's code is one hop away: the component in ``components/<step>/component.py``,
which calls the step function in ``src/searchtune/steps/<step>.py``. The parameters, their
defaults and their descriptions (the KFP UI's run form) come from ``searchtune.params``;
each step receives its own group of them. The same pipeline runs locally under
``kfp.local`` (``searchtune run``) and on a cluster (``searchtune compile`` / ``submit``);
cluster-only settings (images, GPU, node selector...) are applied by
``searchtune.orchestration.cluster.configure_tasks`` from the settings given at compile time.

The pipeline's inputs: every run parameter; ``registry_root`` and ``data`` have no default, so a
compiled pipeline cannot run without them (the bundled sample is ``searchtune run``'s convenience,
never a scheduled run's silent fallback).

The pipeline's outputs (the KFP UI shows them on the ``notify`` node, and the run comparison
shows ``verdict_metrics``): ``verdict`` (BLESSED, NOT BLESSED, FAILED), ``gate`` (the gate metric
with its interval), ``registered_version`` (0 = none), ``reason`` and ``report``. They come from
the notify step, the exit handler around every other step: it runs however the run ends, posts
the verdict to ``notify_webhook`` and is the one task at the pipeline's top level that knows
the outcome (KFP takes pipeline outputs only from there, not from inside the exit handler or
the gate's branches).

Caching (on a cluster; local runs do not cache; on by default, also for scheduled runs):
preflight, champion, evaluate, index (its catalog is a location too), register, the refusal
record and notify read or write state outside the pipeline (the input files, the registry, the
webhook) and are never cached. Ingest is cached on its arguments, which include the
preflight's ``data_version`` (a digest of the input files' names, sizes and versions): new
files behind an unchanged ``data`` location are ingested again, unchanged ones are not, and
tokenize and fine-tune are then cached on ingest's output and their parameters. Fine-tune's
cache key holds what decides the model (the tokenized data, the training parameters, the
resolved warm-start version with the registry and model it comes from) and checkpoint_root
(where a retry resumes from: it changes no result, and seldom changes); not the run's name
(its checkpoint folder is keyed on its own output URI instead), so an unchanged data version
and parameters reuse the model trained before.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Metrics
from searchtune.components.champion.component import champion
from searchtune.components.evaluate.component import evaluate
from searchtune.components.finetune.component import finetune
from searchtune.components.index.component import index
from searchtune.components.ingest.component import ingest
from searchtune.components.notify.component import notify
from searchtune.components.preflight.component import preflight
from searchtune.components.refusal.component import record_refusal
from searchtune.components.register.component import register
from searchtune.components.tokenize.component import tokenize

from searchtune import params
from searchtune.orchestration.cluster import ClusterSettings, configure_tasks
from searchtune.params import (
    GateParams,
    IndexParams,
    IngestParams,
    ModelParams,
    NotifyParams,
    RunParameters,
    TrainParams,
)

PIPELINE_NAME = "searchtune-retraining"
DEFAULTS = RunParameters()


class PipelineOutputs(NamedTuple):
    """What a run ends with, shown in the KFP UI: the notify step's outputs (see the module docstring)."""

    verdict: str
    gate: str
    registered_version: int
    reason: str
    report: str
    verdict_metrics: Metrics


def build_pipeline(settings: ClusterSettings | None = None):
    """Build the pipeline with cluster settings baked in (``@dsl.pipeline`` traces at definition)."""
    settings = settings or ClusterSettings()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Retrain a search-relevance model: ingest, tokenize, LoRA fine-tune, evaluate, gate, register.",
    )
    @params.documented("Retrain, evaluate, gate and register a search-relevance model.", RunParameters)
    def retraining_pipeline(
        # Required: a run without a registry would train for nothing, one without data would train on the demo sample.
        registry_root: str,
        data: str,
        query_column: str = DEFAULTS.query_column,
        text_columns: str = DEFAULTS.text_columns,
        label_column: str = DEFAULTS.label_column,
        positive_threshold: float = DEFAULTS.positive_threshold,
        binary_labels: bool = DEFAULTS.binary_labels,
        label_min: float = DEFAULTS.label_min,
        label_max: float = DEFAULTS.label_max,
        max_reject_ratio: float = DEFAULTS.max_reject_ratio,
        encoding: str = DEFAULTS.encoding,
        base_model: str = DEFAULTS.base_model,
        architecture: str = DEFAULTS.architecture,
        max_length: int = DEFAULTS.max_length,
        epochs: int = DEFAULTS.epochs,
        batch_size: int = DEFAULTS.batch_size,
        learning_rate: float = DEFAULTS.learning_rate,
        head_learning_rate: float = DEFAULTS.head_learning_rate,
        weight_decay: float = DEFAULTS.weight_decay,
        warmup_ratio: float = DEFAULTS.warmup_ratio,
        lora_r: int = DEFAULTS.lora_r,
        lora_alpha: int = DEFAULTS.lora_alpha,
        lora_dropout: float = DEFAULTS.lora_dropout,
        lora_targets: str = DEFAULTS.lora_targets,
        patience: int = DEFAULTS.patience,
        max_train_rows: int = DEFAULTS.max_train_rows,
        seed: int = DEFAULTS.seed,
        graded_targets: bool = DEFAULTS.graded_targets,
        precision: str = DEFAULTS.precision,
        checkpoint_every_steps: int = DEFAULTS.checkpoint_every_steps,
        max_batch_tokens: int = DEFAULTS.max_batch_tokens,
        processes_per_node: int = DEFAULTS.processes_per_node,
        init_from: str = DEFAULTS.init_from,
        gate_metric: str = DEFAULTS.gate_metric,
        min_auc: float = DEFAULTS.min_auc,
        require_beat_base: bool = DEFAULTS.require_beat_base,
        require_beat_lexical: bool = DEFAULTS.require_beat_lexical,
        max_auc_drop: float = DEFAULTS.max_auc_drop,
        require_improvement: bool = DEFAULTS.require_improvement,
        min_auc_gain: float = DEFAULTS.min_auc_gain,
        confidence: float = DEFAULTS.confidence,
        min_test_queries: int = DEFAULTS.min_test_queries,
        bootstrap_resamples: int = DEFAULTS.bootstrap_resamples,
        catalog: str = DEFAULTS.catalog,
        catalog_id_column: str = DEFAULTS.catalog_id_column,
        catalog_text_columns: str = DEFAULTS.catalog_text_columns,
        model_name: str = DEFAULTS.model_name,
        checkpoint_root: str = DEFAULTS.checkpoint_root,
        notify_webhook: str = DEFAULTS.notify_webhook,
    ) -> PipelineOutputs:
        run_parameters = params.select(RunParameters, locals())  # every run parameter by name (KFP channels here)
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        # Created before the steps it watches: an exit handler may not depend on them; KFP hands it their final state.
        notify_task = notify(**params.select(NotifyParams, run_parameters), registry_root=registry_root,
                             model_name=model_name, run_id=run_id)
        with dsl.ExitHandler(notify_task, name="run"):
            # Not the notify parameters: the webhook URL is a credential and stays out of run.json and lineage.
            preflight_task = preflight(**{name: value for name, value in run_parameters.items()
                                          if name not in NotifyParams.model_fields}, run_id=run_id)
            ingest_task = ingest(**params.select(IngestParams, run_parameters),
                                 data_version=preflight_task.outputs["data_version"], min_test_queries=min_test_queries)
            tokenize_task = tokenize(splits=ingest_task.outputs["splits"], **params.select(ModelParams, run_parameters))
            # init_from arrives resolved ('production' -> '7'), so the step's cache key names the weights it starts
            # from; the run's name is no input, so an unchanged data version and parameters reuse the trained model.
            train_parameters = {**params.select(TrainParams, run_parameters), "init_from": preflight_task.outputs["init_version"]}
            finetune_task = finetune(tokenized=tokenize_task.outputs["tokenized"], **train_parameters,
                                     registry_root=registry_root, model_name=model_name, checkpoint_root=checkpoint_root)
            # Resolved after training, so the evaluation meets the production model of that moment.
            champion_task = champion(registry_root=registry_root, model_name=model_name).after(finetune_task)
            evaluate_task = evaluate(
                splits=ingest_task.outputs["splits"], model=finetune_task.outputs["model"],
                champion=champion_task.outputs["champion"], **params.select(GateParams, run_parameters), run_id=run_id,
            )
            # The return value ("Output"): kfp.local resolves conditions on it, not on named outputs.
            with dsl.If(evaluate_task.outputs["Output"] == True, name="blessed"):  # noqa: E712 - KFP builds a condition from ==
                # The index is built before registration so the version holds it, checksummed, from the start.
                index_task = index(model=finetune_task.outputs["model"], splits=ingest_task.outputs["splits"],
                                   **params.select(IndexParams, run_parameters), text_columns=text_columns)
                register_task = register(
                    model=finetune_task.outputs["model"], splits=ingest_task.outputs["splits"],
                    evaluation=evaluate_task.outputs["evaluation"], run=preflight_task.outputs["run"],
                    product_index=index_task.outputs["product_index"], registry_root=registry_root, model_name=model_name,
                )
            with dsl.Else(name="refused"):
                refusal_task = record_refusal(evaluation=evaluate_task.outputs["evaluation"],
                                              run=preflight_task.outputs["run"], registry_root=registry_root,
                                              model_name=model_name)
        configure_tasks(
            settings,
            cpu_tasks=[preflight_task, ingest_task, tokenize_task, champion_task, evaluate_task, index_task, register_task,
                       refusal_task, notify_task],
            finetune_task=finetune_task,
        )
        for task in (preflight_task, champion_task, evaluate_task, index_task, register_task, refusal_task, notify_task):
            task.set_caching_options(False)
        # The pipeline's outputs come from the exit handler: KFP takes them only from the pipeline's top level.
        return PipelineOutputs(*(notify_task.outputs[name] for name in PipelineOutputs._fields))

    return retraining_pipeline


retraining_pipeline = build_pipeline()
