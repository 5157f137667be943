"""KFP component for the tokenize step; the logic is ``searchtune.steps.tokenize.tokenize``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from searchtune.orchestration.images import CPU_IMAGE
from searchtune.params import ModelParams, documented


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
@documented(
    "Tokenize every split with the base model's fast tokenizer, unpadded.",
    ModelParams,
    splits="output of the ingest step.",
    tokenized="token ids per split, the tokenizer and tokenize_stats.json.",
    metrics="token counts, mean lengths and truncation rates.",
)
def tokenize(
    splits: Input[Dataset],
    base_model: str,
    architecture: str,
    max_length: int,
    tokenized: Output[Dataset],
    metrics: Output[Metrics],
):
    from searchtune import logs, params
    from searchtune.steps import tokenize as step

    with logs.component_step("tokenize"):
        config = params.parse(params.ModelParams, params.select(params.ModelParams, locals()))
        stats = step.tokenize(splits.path, tokenized.path, config)
        for split, split_stats in stats.splits.items():
            metrics.log_metric(f"{split}_tokens", split_stats["tokens"])
            for field, lengths in split_stats.items():
                if isinstance(lengths, dict):
                    metrics.log_metric(f"{split}_{field}_mean_length", lengths["mean"])
                    metrics.log_metric(f"{split}_{field}_truncated_rate", lengths["truncated_rate"])
