"""KFP component for the tokenize step; the logic is ``searchtune.tokenize.tokenize``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from searchtune.orchestration.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tokenize(
    splits: Input[Dataset],
    base_model: str,
    architecture: str,
    max_length: int,
    tokenized: Output[Dataset],
    metrics: Output[Metrics],
):
    """Tokenize every split with the base model's fast tokenizer, unpadded.

    Args:
        splits: output of the ingest step.
        base_model: Hugging Face model id or path; '' = the bundled all-MiniLM-L6-v2.
        architecture: bi-encoder or cross-encoder (how a pair is encoded).
        max_length: truncation length in tokens.
        tokenized: token ids per split, the tokenizer and tokenize_stats.json.
        metrics: token counts, mean lengths and truncation rates.
    """
    from searchtune import logs
    from searchtune.steps import tokenize as step

    with logs.component_step("tokenize"):
        stats = step.tokenize(splits.path, tokenized.path, base_model, architecture, max_length)
        for split, split_stats in stats["splits"].items():
            metrics.log_metric(f"{split}_tokens", split_stats["tokens"])
            for field, lengths in split_stats.items():
                if isinstance(lengths, dict):
                    metrics.log_metric(f"{split}_{field}_mean_length", lengths["mean"])
                    metrics.log_metric(f"{split}_{field}_truncated_rate", lengths["truncated_rate"])
