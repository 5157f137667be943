"""``searchtune run`` (the DAG under kfp.local) and ``searchtune compile`` (the KFP IR)."""

import argparse
import logging
import os
from pathlib import Path

from searchtune import params, records
from searchtune.cli import cluster_flags, exit_codes
from searchtune.cli.next_steps import next_steps
from searchtune.cli.parameters import add_parameter_flags, given
from searchtune.errors import SearchtuneError
from searchtune.orchestration import images, local_run
from searchtune.params import RunParameters
from searchtune.steps.evaluation import summary

log = logging.getLogger(__name__)

DEFAULT_HOME = os.environ.get("SEARCHTUNE_HOME", ".searchtune")
DEFAULT_REGISTRY = str(Path(DEFAULT_HOME, "registry"))

# The bundled sample is a demo: a training budget that ends in minutes on 2 CPU cores and
# still shows the tuned model beating the untuned one. Your own data gets the parameters'
# full defaults (all rows, 3 epochs); either can be overridden with the flags.
SAMPLE_DATA_BUDGET = {"epochs": 2, "max_train_rows": 3000}
RUNNERS = ("subprocess", "docker")


def run_parameters(args: argparse.Namespace) -> RunParameters:
    """The validated parameters of this run: the flags given, the local defaults, the declared defaults.

    Raises:
        SearchtuneError: a parameter is invalid (one line naming the flag).
    """
    values = given(args)
    values.setdefault("registry_root", DEFAULT_REGISTRY)
    if not values.get("data"):
        # Only `searchtune run` falls back to the sample: the compiled pipeline requires data.
        applied = [name for name, value in SAMPLE_DATA_BUDGET.items() if name not in values and values.setdefault(name, value) == value]
        budget = ("; demo budget " + ", ".join(f"{name}={values[name]}" for name in applied) + " (set "
                  + " / ".join("--" + name.replace("_", "-") for name in applied) + " to change)") if applied else ""
        log.info("no --data: training on the bundled synthetic sample%s", budget)
    return params.parse(RunParameters, values, flag_style=True)


def add_run_parser(commands) -> None:
    parser = commands.add_parser(
        "run", help="run the retraining pipeline locally with kfp.local",
        description="Run the whole DAG locally with kfp.local, on the embedded defaults or your data: each step as a "
                    "subprocess of this environment, or in its container image (--runner docker).",
        epilog=exit_codes.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parameter_flags(parser, defaults={"registry_root": DEFAULT_REGISTRY}, sample_defaults=SAMPLE_DATA_BUDGET)
    parser.add_argument("--output-dir", default=str(Path(DEFAULT_HOME, "runs")),
                        help="where each run gets its own folder (default %(default)s)")
    where = parser.add_argument_group("where the steps run")
    where.add_argument("--runner", choices=RUNNERS, default="subprocess",
                       help="subprocess: every step in this Python environment; docker: every step in its image "
                            "(kfp.local DockerRunner; build them with 'make images'), the run's local paths mounted "
                            "(default %(default)s)")
    where.add_argument("--image-prefix", default=None,
                       help=f"with --runner docker: registry path of the images (default {images.IMAGE_PREFIX})")
    where.add_argument("--image-tag", default=None, help=f"with --runner docker: tag of the images (default {images.IMAGE_TAG})")
    where.add_argument("--gpus", action="store_true",
                       help="with --runner docker: give the steps this machine's GPUs and fine-tune in the GPU image "
                            "(default: fine-tune in the CPU image)")
    parser.set_defaults(func=run_command)


def add_compile_parser(commands) -> None:
    parser = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML",
                                 description="Write the pipeline as KFP IR YAML for Kubeflow Pipelines or Vertex AI Pipelines.")
    parser.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML path (default pipeline.yaml)")
    cluster_flags.add_compile_arguments(parser)
    parser.set_defaults(func=compile_command)


def compile_command(args) -> int:
    path = local_run.compile_pipeline(args.output, cluster_flags.settings_from_args(args))
    print(f"wrote {path}")
    return exit_codes.OK


def describe_step(step: str, folder: Path) -> str:
    """The counts shown when a step ends (from the step's records), e.g. ``9590 rows read, 0 rejected``."""
    if step == "preflight":
        run = records.RunRecord.read(str(folder / "run"))
        size = sum(f.size for f in run.data_files) / 1e6
        return f"{len(run.parameters)} parameters valid, {len(run.data_files)} input file(s) ({size:.1f} MB), registry writable"
    if step == "ingest":
        stats = records.IngestStats.read(str(folder / "splits"))
        splits = " / ".join(f"{s.rows} {name}" for name, s in stats.splits.items())
        return (f"{stats.rows_read} rows read, {stats.rows_rejected} rejected, {stats.duplicates_dropped} duplicates dropped; "
                f"{splits} rows")
    if step == "tokenize":
        stats = records.TokenizeStats.read(str(folder / "tokenized"))
        tokens = sum(int(s.get("tokens", 0)) for s in stats.splits.values())
        return f"{tokens} tokens in {sum(int(s.get('rows', 0)) for s in stats.splits.values())} rows (max_length {stats.max_length})"
    if step == "finetune":
        model = records.ModelRecord.read(str(folder / "model"))
        auc = "-" if model.best_validation_auc is None else f"{model.best_validation_auc:.3f}"
        return f"{model.train_rows} training rows, {len(model.epochs)} epoch(s), best epoch {model.best_epoch} (validation AUC {auc})"
    if step == "champion":
        found = records.ChampionRecord.read(str(folder / "champion"))
        if not found.found:
            return "no production model yet"
        return f"production v{found.version}" + (f" could not be fetched: {found.error}" if found.error else "")
    if step == "evaluate":
        evaluation = records.Evaluation.read(str(folder / "evaluation"))
        verdict = "BLESSED" if evaluation.blessing.blessed else f"NOT BLESSED ({evaluation.blessing.decided_by})"
        return f"{evaluation.test_rows} test rows, {evaluation.test_queries} queries; {verdict}"
    if step == "register":
        outcome = records.Registration.read(str(folder / "registration"))
        return f"version {outcome.version}" + (", now production" if outcome.promoted else ", not promoted")
    if step == "record-refusal":
        return "refused candidate recorded in the registry's candidates log"
    return ""


def describe_run(run) -> str:
    """The final block: the verdict, the gate metric with intervals, drift in one line, and openable paths.

    The paths point into the run's own folder (``report.html``, ``summary.md``, ``model``...,
    see ``local_run.PUBLISHED``), falling back to the step outputs of older runs.
    """
    evaluation = records.Evaluation.read(str(run.step_output("evaluate", "evaluation")))
    blessing = evaluation.blessing
    statistics, metric = blessing.statistics, blessing.rule.gate_metric
    shown = [f"{summary.model_label(name, evaluation.production_version)} {summary.format_estimate(values.get(metric))}"
             for name, values in statistics.models.items()]
    drift = evaluation.drift
    report = _path(run, records.REPORT_FILE, run.step_output("evaluate", "report"))
    lines = [
        f"pipeline finished in {run.seconds:.0f} s (run {run.run_id})",
        f"  {'BLESSED' if blessing.blessed else 'NOT BLESSED'}: {blessing.reason}",
        f"  test {statistics.metrics[metric].label} [{statistics.confidence:.0%} interval]: " + ", ".join(shown[:2]),
        *(["      " + ", ".join(shown[2:])] if len(shown) > 2 else []),
        f"  drift:    {drift.headline or drift.status}",
        f"  report:   {report}",
        f"  summary:  {_path(run, records.SUMMARY_FILE, run.step_output('evaluate', 'summary'))}",
        f"  model:    {_path(run, 'model', run.step_output('finetune', 'model'))}",
    ]
    registration = run.step_output("register", "registration")
    if registration.exists():
        outcome = records.Registration.read(str(registration))
        state = "now production" if outcome.promoted else f"not promoted: {outcome.reason}"
        lines.append(f"  registry: {outcome.registry_uri} (version {outcome.version}, {state})")
    else:
        lines.append(f"  registry: {run.parameters.registry_root} unchanged (not blessed, nothing registered)")
    log_file = run.published(local_run.LOG_FILE)
    if log_file is not None:
        lines.append(f"  log:      {log_file}")
    promoted = registration.exists() and records.Registration.read(str(registration)).promoted
    lines += next_steps(blessing, run.parameters.registry_root, run.parameters.model_name, promoted,
                        evaluation.production_version, str(report))
    return "\n".join(lines)


def _path(run, name: str, fallback: Path) -> Path:
    return run.published(name) or fallback


def container_options(args: argparse.Namespace) -> local_run.ContainerOptions | None:
    """What ``--runner docker`` and its options ask for; None for the subprocess runner.

    Raises:
        SearchtuneError: an image option without ``--runner docker``.
    """
    if args.runner == "docker":
        return local_run.ContainerOptions(image_prefix=args.image_prefix, image_tag=args.image_tag, gpus=args.gpus)
    given_options = [flag for flag, value in (("--image-prefix", args.image_prefix), ("--image-tag", args.image_tag),
                                              ("--gpus", args.gpus)) if value]
    if given_options:
        raise SearchtuneError(f"{', '.join(given_options)} only apply with --runner docker")
    return None


def run_command(args) -> int:
    parameters = run_parameters(args)
    run = local_run.run_local(parameters, args.output_dir, describe_step=describe_step, containers=container_options(args))
    print(describe_run(run))
    registration = run.step_output("register", "registration")
    promoted = registration.exists() and records.Registration.read(str(registration)).promoted
    return exit_codes.OK if promoted else exit_codes.NOT_PROMOTED
