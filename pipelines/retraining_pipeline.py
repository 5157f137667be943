"""The retraining DAG: ingest -> tokenize -> fine-tune -> evaluate -> [blessed] -> register.

Each step's code is one hop away: the component in ``components/<step>/component.py``,
which calls the step function in ``src/searchtune/<step>.py``. The same pipeline runs
locally under ``kfp.local`` (``searchtune run``) and on a cluster (``searchtune compile``
/ ``searchtune submit``); cluster-only settings (images, GPU, node selector...) are applied
by ``searchtune.cluster.configure_tasks`` from the settings given at compile time.
"""

from kfp import dsl
from searchtune.components.evaluate.component import evaluate
from searchtune.components.finetune.component import finetune
from searchtune.components.ingest.component import ingest
from searchtune.components.register.component import register
from searchtune.components.tokenize.component import tokenize

from searchtune.orchestration.cluster import ClusterSettings, configure_tasks

PIPELINE_NAME = "searchtune-retraining"


def build_pipeline(settings: ClusterSettings | None = None):
    """Build the pipeline with cluster settings baked in (``@dsl.pipeline`` traces at definition)."""
    settings = settings or ClusterSettings()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Retrain a search-relevance model: ingest, tokenize, LoRA fine-tune, evaluate, gate on AUC, register.",
    )
    def retraining_pipeline(
        data: str = "",
        query_column: str = "search_term",
        text_columns: str = "product_title,brand",
        label_column: str = "relevance",
        positive_threshold: float = 2.5,
        binary_labels: bool = False,
        label_min: float = 1.0,
        label_max: float = 3.0,
        max_reject_ratio: float = 0.05,
        base_model: str = "",
        architecture: str = "bi-encoder",
        max_length: int = 64,
        epochs: int = 3,
        batch_size: int = 32,
        learning_rate: float = 5e-4,
        lora_r: int = 16,
        patience: int = 1,
        max_train_rows: int = 0,
        seed: int = 13,
        min_auc: float = 0.6,
        max_auc_drop: float = 0.0,
        registry_root: str = "",
        model_name: str = "searchtune-relevance",
        checkpoint_root: str = "",
    ):
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        ingest_task = ingest(
            data=data, query_column=query_column, text_columns=text_columns, label_column=label_column,
            positive_threshold=positive_threshold, binary_labels=binary_labels, label_min=label_min,
            label_max=label_max, max_reject_ratio=max_reject_ratio,
        )
        tokenize_task = tokenize(
            splits=ingest_task.outputs["splits"], base_model=base_model, architecture=architecture, max_length=max_length,
        )
        finetune_task = finetune(
            tokenized=tokenize_task.outputs["tokenized"], base_model=base_model, architecture=architecture,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lora_r=lora_r, patience=patience,
            max_train_rows=max_train_rows, seed=seed, checkpoint_root=checkpoint_root, run_id=run_id,
        )
        evaluate_task = evaluate(
            splits=ingest_task.outputs["splits"], model=finetune_task.outputs["model"], registry_root=registry_root,
            model_name=model_name, min_auc=min_auc, max_auc_drop=max_auc_drop, run_id=run_id,
        )
        # The return value ("Output"): kfp.local resolves conditions on it, not on named outputs.
        with dsl.If(evaluate_task.outputs["Output"] == True, name="blessed"):  # noqa: E712 - KFP builds a condition from ==
            register_task = register(
                model=finetune_task.outputs["model"], splits=ingest_task.outputs["splits"],
                evaluation=evaluate_task.outputs["evaluation"], registry_root=registry_root, model_name=model_name,
                run_id=run_id,
                # An f-string of pipeline parameters is resolved by KFP at run time: the lineage
                # records the values this run actually used.
                parameters_json=(
                    f'{{"data": "{data}", "base_model": "{base_model}", "architecture": "{architecture}", '
                    f'"epochs": {epochs}, "learning_rate": {learning_rate}, "lora_r": {lora_r}, '
                    f'"positive_threshold": {positive_threshold}, "min_auc": {min_auc}, "max_auc_drop": {max_auc_drop}}}'
                ),
            )
        configure_tasks(
            settings,
            cpu_tasks=[ingest_task, tokenize_task, evaluate_task, register_task],
            finetune_task=finetune_task,
        )
        # Evaluate and register read and write the registry, which is outside KFP's cache
        # key: a cached evaluation would judge against a champion that may have changed.
        evaluate_task.set_caching_options(False)
        register_task.set_caching_options(False)

    return retraining_pipeline


retraining_pipeline = build_pipeline()
