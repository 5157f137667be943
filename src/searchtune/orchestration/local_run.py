"""Run the pipeline on this machine with ``kfp.local``, and compile it for a cluster.

``run_local`` executes the very pipeline that ``compile_pipeline`` writes for a cluster,
with ``kfp.local.SubprocessRunner(use_venv=False)``: every component runs as a
subprocess of this Python environment instead of a pod. With ``ContainerOptions`` (``searchtune
run --runner docker``) each component runs in its image instead, through kfp.local's
DockerRunner, with the run's local paths mounted (``orchestration.containers``).

Each run owns its outputs: its id is decided here, before anything runs, and names the
folder that becomes the run's pipeline root, so two runs sharing ``--output-dir`` never
read each other's records. After the run, that folder also holds what people open, under
names with extensions: ``report.html``, ``summary.md``, ``drift_report.html``,
``predictions.parquet``, ``model_card.md``, ``model`` (a link to the model folder) and
``pipeline.log`` (every step's full output).

The terminal. kfp.local prints everything a step writes, and its own executor dumps (the
whole executor input as JSON, per step). ``run_local`` reads all of it through
``searchtune.logs.PipelineConsole``: the full text goes to
``pipeline.log``; the terminal gets one line when a step starts and one when it ends (with
its counts and seconds), the steps' warnings and errors, a progress bar for long loops,
and, when a step crashes, the end of its output with the traceback. At ``--log-level
DEBUG`` the terminal gets everything, as kfp.local prints it.
"""

import dataclasses
import datetime
import getpass
import logging
import os
import secrets
import shutil
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path

from searchtune import records
from searchtune.errors import EnvironmentFault, SearchtuneError
from searchtune.logs import ENVIRONMENT_MARK, ERROR_FILE_ENV, PipelineConsole
from searchtune.params import RunParameters
from searchtune.progress import EVENTS_ENV

log = logging.getLogger(__name__)

LOG_FILE = "pipeline.log"
ERROR_FILE = ".step-errors"  # the steps' one-line refusals, read back when a step fails
# Settings of this shell that the step containers get too (the subprocess steps inherit them).
PASSED_TO_CONTAINERS = ("HF_HUB_OFFLINE", "HF_TOKEN", "SEARCHTUNE_LOG_LEVEL")
# What people open, linked or copied into the run's folder: (step, output artifact, file inside or None, name).
PUBLISHED = (
    ("evaluate", "report", None, records.REPORT_FILE),
    ("evaluate", "summary", None, records.SUMMARY_FILE),
    ("evaluate", "drift_report", None, records.DRIFT_HTML_FILE),
    ("evaluate", "evaluation", records.PREDICTIONS_FILE, records.PREDICTIONS_FILE),
    ("evaluate", "evaluation", records.MODEL_CARD_FILE, records.MODEL_CARD_FILE),
    ("finetune", "model", None, "model"),
)


class PipelineFailed(Exception):
    """A step failed for a reason that is not the user's input (a bug or a crash): exit 1."""


@dataclasses.dataclass(frozen=True)
class ContainerOptions:
    """Run each step in its image (kfp.local's DockerRunner) instead of this Python environment.

    Attributes:
        image_prefix: Registry path of the images; None = the components' default.
        image_tag: Tag of the images; None = the package version.
        gpus: Give the containers every GPU and fine-tune in the GPU image; otherwise the
            fine-tune step runs in the CPU image too.
    """

    image_prefix: str | None = None
    image_tag: str | None = None
    gpus: bool = False


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """Where one local run's outputs are."""

    run_id: str
    root: str  # <output-dir>/<run_id>: this run's pipeline root
    run_dir: str  # the kfp.local run folder inside it: <root>/<pipeline>-<time>/
    seconds: float
    parameters: RunParameters

    def step_output(self, step: str, output: str) -> Path:
        """The folder or file of one step's output artifact."""
        return Path(self.run_dir, step, output)

    def published(self, name: str) -> Path | None:
        """A file or folder of the run's folder (``report.html``, ``model``...), if the run made it."""
        path = Path(self.root, name)
        return path if path.exists() else None


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def compile_pipeline(output: str, settings=None) -> str:
    """Write the pipeline as KFP IR YAML (what Kubeflow Pipelines and Vertex AI accept)."""
    from kfp import compiler

    from searchtune.pipelines.retraining_pipeline import build_pipeline

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), output)
    return output


def run_local(parameters: RunParameters, output_dir: str, describe_step=None,
              containers: ContainerOptions | None = None) -> LocalRun:
    """Run the pipeline under kfp.local in a new folder of ``output_dir``.

    Args:
        parameters: every run parameter.
        output_dir: where the run's folder is made.
        describe_step: ``(step, step folder) -> str``, the counts shown when a step ends
            (default: none, the line gives the seconds only).
        containers: run each step in its image (DockerRunner); None = in this environment.

    Raises:
        SearchtuneError: a step refused the input (the message names the step and the
            reason), or, with ``containers``, a local path no container could see, no Docker
            engine or a missing image (before any step starts).
        EnvironmentFault: the output folder is a file, read-only or too small for the run
            (before any step starts), or a step met such a fault of the machine.
        PipelineFailed: a step crashed; its log above says why.
    """
    from kfp import local

    from searchtune.orchestration import containers as docker_steps
    from searchtune.orchestration.cluster import ClusterSettings
    from searchtune.orchestration.output_space import check_output_dir
    from searchtune.pipelines.retraining_pipeline import PIPELINE_NAME, build_pipeline

    # kfp.local honours retry policies; locally a failure is the data or the code, not a
    # preempted node, so retrying only delays the error.
    if containers is None:
        settings = ClusterSettings(retries=0, cpu_retries=0)
    else:
        settings = docker_steps.cluster_settings(containers.image_prefix, containers.image_tag, containers.gpus)
        bind_mounts = docker_steps.mounts(parameters)
        docker_steps.check_engine_and_images([settings.cpu_image, settings.gpu_image])
    check_output_dir(output_dir, parameters.data)
    pipeline = build_pipeline(settings)
    arguments = docker_steps.resolved_arguments(parameters).model_dump()
    # kfp.local warns that resource requests and images mean nothing locally: true, and noise here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    run_id = new_run_id()
    root = Path(output_dir, run_id).resolve()
    root.mkdir(parents=True)
    # Inside the run's folder, so a step in a container (which sees only mounted paths) can write it too.
    error_file = root / ERROR_FILE
    error_file.touch()
    # For the steps: progress as events (drawn here as one bar), and no download bars from
    # their libraries in the log.
    step_environment = {EVENTS_ENV: "1", "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ERROR_FILE_ENV: str(error_file)}
    scratch = None
    if containers is None:
        runner = local.SubprocessRunner(use_venv=False)
        # kfp.local writes each step's source into a `mktemp -d` folder it never removes (8-9 a run: a
        # daily schedule would leave thousands): the steps get a scratch TMPDIR, removed after the run.
        # torch's compile cache stays where it was, so runs still share it.
        default_tmp = tempfile.gettempdir()
        scratch = tempfile.mkdtemp(prefix=f"searchtune-{run_id}-")
        step_environment |= {"TMPDIR": scratch, "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
            "TORCHINDUCTOR_CACHE_DIR", os.path.join(default_tmp, f"torchinductor_{getpass.getuser()}"))}
    else:
        passed = {name: os.environ[name] for name in PASSED_TO_CONTAINERS if name in os.environ}
        runner = docker_steps.docker_runner(bind_mounts, {**passed, **step_environment}, gpus=containers.gpus)
    local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
    started = time.time()
    saved_environment = {name: os.environ.get(name) for name in step_environment}
    os.environ.update(step_environment)
    console = PipelineConsole(root / LOG_FILE, lambda: _run_folder(root, PIPELINE_NAME), describe_step)
    try:
        with console, redirect_stdout(console):
            pipeline(**arguments)
    except RuntimeError as error:
        reasons = error_file.read_text().strip()
        if reasons:
            last = reasons.splitlines()[-1]
            if last.startswith(ENVIRONMENT_MARK):
                raise EnvironmentFault(last[len(ENVIRONMENT_MARK):]) from None
            raise SearchtuneError(last) from None
        raise PipelineFailed(f"the pipeline failed: {error}; full log: {root / LOG_FILE}") from None
    finally:
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        error_file.unlink(missing_ok=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    run_dir = _run_folder(root, PIPELINE_NAME)
    if run_dir is None:
        raise PipelineFailed(f"{root}: expected one kfp.local run folder")
    run = LocalRun(run_id=run_id, root=str(root), run_dir=str(run_dir), seconds=round(time.time() - started, 1),
                   parameters=parameters)
    publish(run)
    return run


def _run_folder(root: Path, pipeline_name: str) -> Path | None:
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(pipeline_name)] if root.exists() else []
    return found[0] if len(found) == 1 else None


def publish(run: LocalRun) -> list[Path]:
    """Put what people open into the run's folder, under names with extensions (``PUBLISHED``).

    Files are copied (they are small, and a copy opens anywhere); the model folder is linked.
    Returns the paths made.
    """
    made = []
    for step, output, inner, name in PUBLISHED:
        source = run.step_output(step, output)
        source = source / inner if inner else source
        target = Path(run.root, name)
        if not source.exists() or target.exists():
            continue
        if source.is_dir():
            try:
                target.symlink_to(os.path.relpath(source, run.root), target_is_directory=True)
            except OSError:  # no symbolic links here: the path of the folder itself is what the summary shows
                continue
        else:
            shutil.copyfile(source, target)
        made.append(target)
    return made
