"""``searchtune run`` (the DAG under kfp.local) and ``searchtune compile`` (the KFP IR).

``run`` executes the very pipeline that ``compile`` writes for a cluster, with
``kfp.local.SubprocessRunner(use_venv=False)``: every component runs as a subprocess of
this Python environment instead of a pod.
"""

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from searchtune.errors import SearchtuneError
from searchtune.logs import ERROR_FILE_ENV

log = logging.getLogger(__name__)

DEFAULT_HOME = os.environ.get("SEARCHTUNE_HOME", ".searchtune")

# CLI flag -> pipeline parameter; the pipeline's own defaults apply to flags left out.
PARAMETER_FLAGS = {
    "data": (str, "input file, folder or glob (CSV/Parquet/JSONL, local or gs://); default: the bundled sample"),
    "query_column": (str, "column holding the search query"),
    "text_columns": (str, "comma-separated product text columns (title,description,brand...)"),
    "label_column": (str, "column holding the graded judgement or 0/1 click"),
    "positive_threshold": (float, "graded label >= this is a positive"),
    "label_min": (float, "smallest valid graded label"),
    "label_max": (float, "largest valid graded label"),
    "max_reject_ratio": (float, "fail when a larger share of rows is rejected (default 0.05)"),
    "base_model": (str, "Hugging Face model id or path (default: bundled all-MiniLM-L6-v2)"),
    "architecture": (str, "bi-encoder (default) or cross-encoder"),
    "max_length": (int, "token truncation length (default 64)"),
    "epochs": (int, "maximum training epochs"),
    "batch_size": (int, "training batch size"),
    "learning_rate": (float, "peak learning rate of the LoRA weights"),
    "lora_r": (int, "LoRA rank (0 = full fine-tune)"),
    "patience": (int, "epochs without validation-AUC gain before early stopping"),
    "max_train_rows": (int, "train on a sample of this many rows (0 = all)"),
    "seed": (int, "random seed"),
    "min_auc": (float, "gate: minimum test ROC AUC"),
    "max_auc_drop": (float, "gate: allowed AUC drop below the production model"),
    "model_name": (str, "model name in the registry"),
    "checkpoint_root": (str, "where training checkpoints go ('' = none locally)"),
}


def add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    for name, (kind, help_text) in PARAMETER_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=help_text)
    parser.add_argument("--binary-labels", action="store_true", default=None,
                        help="the label is already 0/1 (clicks); --positive-threshold is ignored")
    parser.add_argument("--registry", dest="registry_root", default=None,
                        help=f"registry root, local or gs:// (default {DEFAULT_HOME}/registry)")


# The bundled sample is a demo: a training budget that ends in minutes on 2 CPU cores and
# still shows the tuned model beating the untuned one. Your own data gets the pipeline's
# full defaults (all rows, 3 epochs); either can be overridden with the flags.
SAMPLE_DATA_BUDGET = {"epochs": 2, "max_train_rows": 3000}


def pipeline_arguments(args: argparse.Namespace) -> dict:
    """The pipeline arguments the user set; everything else keeps the pipeline's default."""
    names = [*PARAMETER_FLAGS, "binary_labels", "registry_root"]
    arguments = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if not arguments.get("data"):
        for name, value in SAMPLE_DATA_BUDGET.items():
            if arguments.setdefault(name, value) == value:
                log.info("bundled sample data: %s=%s (demo budget; set --%s to change)", name, value, name.replace("_", "-"))
    return arguments


def add_run_parser(commands) -> None:
    parser = commands.add_parser("run", help="run the retraining pipeline locally with kfp.local",
                                 description="Run the whole DAG locally (kfp.local SubprocessRunner) on the embedded defaults or your data.")
    add_parameter_flags(parser)
    parser.add_argument("--output-dir", default=None, help=f"kfp.local pipeline root (default {DEFAULT_HOME}/runs)")
    parser.set_defaults(func=run_command)


def add_compile_parser(commands, cluster) -> None:
    parser = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML",
                                 description="Write the pipeline as KFP IR YAML for Kubeflow Pipelines or Vertex AI Pipelines.")
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML path (default pipeline.yaml)")
    cluster.add_compile_arguments(parser)
    parser.set_defaults(func=lambda args: compile_command(args, cluster))


def compile_pipeline(output: str, settings=None) -> str:
    from kfp import compiler

    from searchtune.pipelines.retraining_pipeline import build_pipeline

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), output)
    return output


def compile_command(args, cluster) -> int:
    path = compile_pipeline(args.output, cluster.settings_from_args(args))
    print(f"wrote {path}")
    return 0


def run_local(arguments: dict, pipeline_root: str) -> dict:
    """Run the pipeline under kfp.local and return where its outputs landed.

    Raises:
        SearchtuneError: a step failed; the message names the step and the reason.
    """
    from kfp import local

    from searchtune.orchestration.cluster import ClusterSettings
    from searchtune.pipelines.retraining_pipeline import PIPELINE_NAME, build_pipeline
    from searchtune.registry import DEFAULT_MODEL_NAME

    # kfp.local honours retry policies; locally a failure is the data or the code, not a
    # preempted node, so retrying only delays the error.
    retraining_pipeline = build_pipeline(ClusterSettings(retries=0, cpu_retries=0))

    arguments = dict(arguments)
    arguments.setdefault("registry_root", str(Path(DEFAULT_HOME, "registry").resolve()))
    if not arguments["registry_root"].startswith("gs://"):
        arguments["registry_root"] = str(Path(arguments["registry_root"]).resolve())
    if arguments.get("data") and not arguments["data"].startswith("gs://"):
        arguments["data"] = str(Path(arguments["data"]).resolve())
    # kfp.local warns that resource requests and images mean nothing locally: true, and noise here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    pipeline_root = str(Path(pipeline_root).resolve())
    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    started = time.time()
    existing = set(os.listdir(pipeline_root))
    with tempfile.NamedTemporaryFile("r", suffix=".errors", delete=False) as error_file:
        os.environ[ERROR_FILE_ENV] = error_file.name
    try:
        retraining_pipeline(**arguments)
    except RuntimeError as error:
        reasons = Path(error_file.name).read_text().strip()
        raise SearchtuneError(reasons.splitlines()[-1] if reasons else f"the pipeline failed: {error}") from None
    finally:
        os.environ.pop(ERROR_FILE_ENV, None)
        os.unlink(error_file.name)
    runs = sorted(d for d in os.listdir(pipeline_root) if d.startswith(PIPELINE_NAME) and d not in existing)
    run_dir = Path(pipeline_root, runs[-1])
    return {
        "run_dir": str(run_dir),
        "seconds": round(time.time() - started, 1),
        "registry_root": arguments["registry_root"],
        "model_name": arguments.get("model_name", DEFAULT_MODEL_NAME),
    }


def describe_run(result: dict) -> str:
    """Tell the user where the model, summary, drift report and registry entry are."""
    run_dir = Path(result["run_dir"])
    evaluation_dir = run_dir / "evaluate" / "evaluation"
    blessing = json.loads((evaluation_dir / "blessing.json").read_text())
    evaluation = json.loads((evaluation_dir / "evaluation.json").read_text())
    lines = [
        f"pipeline finished in {result['seconds']:.0f} s",
        f"  test ROC AUC: candidate {evaluation['candidate']['roc_auc']:.4f}, untuned base {evaluation['untuned_base']['roc_auc']:.4f}"
        + (f", production v{evaluation['champion']['version']} {evaluation['champion']['roc_auc']:.4f}" if "champion" in evaluation else ""),
        f"  {'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}: {blessing['reason']}",
        f"  model:        {run_dir / 'finetune' / 'model'}",
        f"  summary:      {run_dir / 'evaluate' / 'summary'}",
        f"  drift report: {run_dir / 'evaluate' / 'drift_report'}",
    ]
    registration = run_dir / "register" / "registration" / "registration.json"
    if registration.exists():
        outcome = json.loads(registration.read_text())
        lines.append(f"  registry:     {outcome.get('registry_uri', result['registry_root'])} "
                     f"(version {outcome.get('version')}, {'now production' if outcome.get('promoted') else 'not promoted: ' + str(outcome.get('reason'))})")
    else:
        lines.append(f"  registry:     {result['registry_root']} unchanged (not blessed, nothing registered)")
    return "\n".join(lines)


def run_command(args) -> int:
    result = run_local(pipeline_arguments(args), args.output_dir or str(Path(DEFAULT_HOME, "runs")))
    print(describe_run(result))
    return 0
