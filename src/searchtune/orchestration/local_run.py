"""Run the pipeline on this machine with ``kfp.local``, and compile it for a cluster.

``run_local`` executes the very pipeline that ``compile_pipeline`` writes for a cluster,
with ``kfp.local.SubprocessRunner(use_venv=False)``: every component runs as a
subprocess of this Python environment instead of a pod.

Each run owns its outputs: its id is decided here, before anything runs, and names the
folder that becomes the run's pipeline root, so two runs sharing ``--output-dir`` never
read each other's records.
"""

import dataclasses
import datetime
import logging
import os
import secrets
import tempfile
import time
import warnings
from pathlib import Path

from searchtune.errors import SearchtuneError
from searchtune.logs import ERROR_FILE_ENV
from searchtune.params import RunParameters

log = logging.getLogger(__name__)


class PipelineFailed(Exception):
    """A step failed for a reason that is not the user's input (a bug or a crash): exit 1."""


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


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def compile_pipeline(output: str, settings=None) -> str:
    """Write the pipeline as KFP IR YAML (what Kubeflow Pipelines and Vertex AI accept)."""
    from kfp import compiler

    from searchtune.pipelines.retraining_pipeline import build_pipeline

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), output)
    return output


def run_local(parameters: RunParameters, output_dir: str) -> LocalRun:
    """Run the pipeline under kfp.local in a new folder of ``output_dir``.

    Raises:
        SearchtuneError: a step refused the input; the message names the step and the reason.
        PipelineFailed: a step crashed; its log above says why.
    """
    from kfp import local

    from searchtune.orchestration.cluster import ClusterSettings
    from searchtune.pipelines.retraining_pipeline import PIPELINE_NAME, build_pipeline

    # kfp.local honours retry policies; locally a failure is the data or the code, not a
    # preempted node, so retrying only delays the error.
    pipeline = build_pipeline(ClusterSettings(retries=0, cpu_retries=0))
    arguments = parameters.model_dump()
    for name in ("registry_root", "data", "checkpoint_root"):
        if arguments[name] and not arguments[name].startswith("gs://"):
            arguments[name] = str(Path(arguments[name]).resolve())
    # kfp.local warns that resource requests and images mean nothing locally: true, and noise here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    run_id = new_run_id()
    root = Path(output_dir, run_id).resolve()
    root.mkdir(parents=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    started = time.time()
    with tempfile.NamedTemporaryFile("r", suffix=".errors", delete=False) as error_file:
        os.environ[ERROR_FILE_ENV] = error_file.name
    try:
        pipeline(**arguments)
    except RuntimeError as error:
        reasons = Path(error_file.name).read_text().strip()
        if reasons:
            raise SearchtuneError(reasons.splitlines()[-1]) from None
        raise PipelineFailed(f"the pipeline failed: {error}") from None
    finally:
        os.environ.pop(ERROR_FILE_ENV, None)
        os.unlink(error_file.name)
    run_dirs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(PIPELINE_NAME)]
    if len(run_dirs) != 1:
        raise PipelineFailed(f"{root}: expected one kfp.local run folder, found {len(run_dirs)}")
    return LocalRun(run_id=run_id, root=str(root), run_dir=str(run_dirs[0]), seconds=round(time.time() - started, 1),
                    parameters=parameters)
