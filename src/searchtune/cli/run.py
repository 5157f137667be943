"""``searchtune run`` (the DAG under kfp.local) and ``searchtune compile`` (the KFP IR)."""

import argparse
import logging
import os
from pathlib import Path

from searchtune import params, records
from searchtune.cli import cluster_flags, exit_codes
from searchtune.cli.parameters import add_parameter_flags, given
from searchtune.params import RunParameters
from searchtune.steps import summary

log = logging.getLogger(__name__)

DEFAULT_HOME = os.environ.get("SEARCHTUNE_HOME", ".searchtune")
DEFAULT_REGISTRY = str(Path(DEFAULT_HOME, "registry"))

# The bundled sample is a demo: a training budget that ends in minutes on 2 CPU cores and
# still shows the tuned model beating the untuned one. Your own data gets the parameters'
# full defaults (all rows, 3 epochs); either can be overridden with the flags.
SAMPLE_DATA_BUDGET = {"epochs": 2, "max_train_rows": 3000}


def run_parameters(args: argparse.Namespace) -> RunParameters:
    """The validated parameters of this run: the flags given, the local defaults, the declared defaults.

    Raises:
        SearchtuneError: a parameter is invalid (one line naming the flag).
    """
    values = given(args)
    values.setdefault("registry_root", DEFAULT_REGISTRY)
    if not values.get("data"):
        for name, value in SAMPLE_DATA_BUDGET.items():
            if values.setdefault(name, value) == value:
                log.info("bundled sample data: %s=%s (demo budget; set --%s to change)", name, value, name.replace("_", "-"))
    return params.parse(RunParameters, values, flag_style=True)


def add_run_parser(commands) -> None:
    parser = commands.add_parser(
        "run", help="run the retraining pipeline locally with kfp.local",
        description="Run the whole DAG locally (kfp.local SubprocessRunner) on the embedded defaults or your data.",
        epilog=exit_codes.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parameter_flags(parser, defaults={"registry_root": DEFAULT_REGISTRY})
    parser.add_argument("--output-dir", default=str(Path(DEFAULT_HOME, "runs")),
                        help="where each run gets its own folder (default %(default)s)")
    parser.set_defaults(func=run_command)


def add_compile_parser(commands) -> None:
    parser = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML",
                                 description="Write the pipeline as KFP IR YAML for Kubeflow Pipelines or Vertex AI Pipelines.")
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML path (default pipeline.yaml)")
    cluster_flags.add_compile_arguments(parser)
    parser.set_defaults(func=compile_command)


def compile_command(args) -> int:
    from searchtune.orchestration.local_run import compile_pipeline

    path = compile_pipeline(args.output, cluster_flags.settings_from_args(args))
    print(f"wrote {path}")
    return exit_codes.OK


def describe_run(run) -> str:
    """Tell the user what was decided and where the model, summary, drift report and registry entry are."""
    evaluation = records.Evaluation.read(str(run.step_output("evaluate", "evaluation")))
    blessing = evaluation.blessing
    statistics, metric = blessing.statistics, blessing.rule.gate_metric
    shown = ", ".join(f"{summary.model_label(name, evaluation.production_version)} {summary.format_estimate(values.get(metric))}"
                      for name, values in statistics.models.items())
    lines = [
        f"pipeline finished in {run.seconds:.0f} s (run {run.run_id})",
        f"  test {statistics.metrics[metric].label}: {shown}",
        f"  {'BLESSED' if blessing.blessed else 'NOT BLESSED'}: {blessing.reason}",
        f"  model:        {run.step_output('finetune', 'model')}",
        f"  summary:      {run.step_output('evaluate', 'summary')}",
        f"  drift report: {run.step_output('evaluate', 'drift_report')}",
    ]
    registration = run.step_output("register", "registration")
    if registration.exists():
        outcome = records.Registration.read(str(registration))
        state = "now production" if outcome.promoted else f"not promoted: {outcome.reason}"
        lines.append(f"  registry:     {outcome.registry_uri} (version {outcome.version}, {state})")
    else:
        lines.append(f"  registry:     {run.parameters.registry_root} unchanged (not blessed, nothing registered)")
    return "\n".join(lines)


def run_command(args) -> int:
    from searchtune.orchestration.local_run import run_local

    run = run_local(run_parameters(args), args.output_dir)
    print(describe_run(run))
    registration = run.step_output("register", "registration")
    promoted = registration.exists() and records.Registration.read(str(registration)).promoted
    return exit_codes.OK if promoted else exit_codes.NOT_PROMOTED
