"""``searchtune submit``: compile the pipeline, upload it to Kubeflow Pipelines, start a run or a schedule."""

import argparse
import json
import os
import tempfile

from searchtune import params
from searchtune.cli import cluster_flags, exit_codes
from searchtune.cli.parameters import add_parameter_flags, given
from searchtune.errors import SearchtuneError
from searchtune.orchestration.cron import validate_cron
from searchtune.orchestration.kfp_client import HOST_ENV, compile_package, send
from searchtune.orchestration.submission_plan import DEFAULT_EXPERIMENT, plan
from searchtune.params import RunParameters

# Pipeline arguments from the environment: SEARCHTUNE_PARAM_MIN_AUC=0.7 sets min_auc. A
# team's ConfigMap (manifests/) sets what its deployment needs without editing the CronJob.
PARAM_ENV_PREFIX = "SEARCHTUNE_PARAM_"
# The compiled pipeline's inputs without a default, asked for before the few seconds of compiling.
REQUIRED = {
    "registry_root": "the model registry, gs://bucket/prefix",
    "data": "the judgement logs to train on, e.g. gs://bucket/search-logs/*.parquet (the bundled sample is for "
            "`searchtune run` only: a scheduled run never trains on it by accident)",
}


def add_parser(subparsers) -> None:
    """Add ``searchtune submit`` to the CLI.

    Args:
        subparsers: The CLI's sub-command parsers.
    """
    parser = subparsers.add_parser(
        "submit",
        help="upload the pipeline to Kubeflow Pipelines and start a run or a schedule",
        description="Compile the pipeline with the cluster settings, upload it as a new pipeline version, "
                    "then start one run or (--schedule) a recurring run. Parameters not given keep the "
                    f"pipeline's defaults; --params-from-env also reads {PARAM_ENV_PREFIX}<NAME> variables.",
    )
    parser.add_argument("--host", metavar="URL", default=os.environ.get(HOST_ENV),
                        help=f"KFP API endpoint, e.g. https://kfp.example.com (default ${HOST_ENV})")
    parser.add_argument("--schedule", metavar="CRON",
                        help="create a recurring run instead: 6-field cron, seconds first, e.g. '0 0 3 * * *'")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sent as JSON, send nothing")
    parser.add_argument("--experiment", metavar="NAME", default=DEFAULT_EXPERIMENT, help="KFP experiment (default %(default)s)")
    parser.add_argument("--run-name", metavar="NAME", help="display name of the run or recurring run")
    parser.add_argument("--pipeline-name", metavar="NAME", help="name the pipeline is uploaded under (default its own name)")
    parser.add_argument("--params-from-env", action="store_true",
                        help=f"take pipeline arguments from {PARAM_ENV_PREFIX}<NAME> environment variables "
                             f"(e.g. {PARAM_ENV_PREFIX}MIN_AUC=0.7); flags win over them")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a raw pipeline argument, repeatable (e.g. min_auc=0.7); typed by the compiled pipeline")
    parser.add_argument("--no-cache", action="store_true",
                        help="turn step caching off (default on, also for --schedule: ingest is keyed on a digest of "
                             "the input files, so new data is always read, and unchanged data and parameters reuse "
                             "the trained model)")
    parser.add_argument("--namespace", metavar="NAME", help="Kubeflow profile namespace (multi-user KFP; empty = none)")
    parser.add_argument("--service-account", metavar="NAME", help="Kubernetes service account of the run's pods")
    parser.add_argument("--pipeline-root", metavar="URI", help="where the run's artifacts go, e.g. gs://bucket/pipeline-root")
    add_parameter_flags(parser, required=REQUIRED)
    cluster_flags.add_compile_arguments(parser)
    parser.set_defaults(func=handle)


def arguments_from_env(environ: dict) -> dict[str, str]:
    """``SEARCHTUNE_PARAM_<NAME>`` variables as raw ``name -> text``; an empty value means not set.

    Raises:
        SearchtuneError: a variable names no pipeline parameter.
    """
    found = {}
    for key, text in environ.items():
        if key.startswith(PARAM_ENV_PREFIX) and text != "":
            name = key[len(PARAM_ENV_PREFIX):].lower()
            if name not in RunParameters.model_fields:
                raise SearchtuneError(f"${key}: the pipeline has no parameter '{name}'")
            found[name] = text
    return found


def run_arguments(args: argparse.Namespace) -> dict:
    """The pipeline arguments to send: environment (if asked), then flags; checked as a whole.

    Raises:
        SearchtuneError: a parameter is invalid, or no registry is given (one line).
    """
    values = {**(arguments_from_env(os.environ) if args.params_from_env else {}), **given(args)}
    checked = params.parse(RunParameters, values, flag_style=True)  # pydantic also converts the env's text
    for name, what in REQUIRED.items():
        if not getattr(checked, name) and not any(item.startswith(f"{name}=") for item in args.param):
            raise SearchtuneError(f"--{name.replace('_', '-')} is required: {what}")
    return {name: getattr(checked, name) for name in values}


def handle(args: argparse.Namespace) -> int:
    """Run ``searchtune submit``.

    Args:
        args: Parsed arguments of the ``submit`` sub-command.
    """
    if not args.host:
        raise SearchtuneError(f"--host is required (or set ${HOST_ENV})")
    if args.schedule:
        validate_cron(args.schedule)  # before the compile, which takes a few seconds
    arguments = run_arguments(args)
    settings = cluster_flags.settings_from_args(args, enable_caching=False if args.no_cache else None)
    with tempfile.TemporaryDirectory(prefix="searchtune-submit-") as folder:
        package = compile_package(settings, os.path.join(folder, "pipeline.yaml"))
        submission = plan(
            package, args.host, arguments=arguments, params=args.param, schedule=args.schedule,
            experiment=args.experiment, run_name=args.run_name, pipeline_name=args.pipeline_name,
            # Empty strings (a blank ConfigMap value) mean "not set".
            namespace=args.namespace or None, service_account=args.service_account or None,
            pipeline_root=args.pipeline_root or None,
        )
        if args.dry_run:
            print(json.dumps(submission.to_dict(), indent=2))
            return exit_codes.OK
        ids = send(submission)
    print(json.dumps(ids, indent=2))
    return exit_codes.OK
