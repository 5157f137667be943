"""The ``searchtune`` command: run, compile, submit the pipeline and manage the registry.

Each sub-command lives next to the code it drives; this module only wires them
into one argparse tree, turns ``SearchtuneError`` into a one-line message and maps
outcomes to the exit codes of ``searchtune.cli.exit_codes``.
"""

import argparse
import os
import sys

from searchtune import logs
from searchtune.cli import exit_codes
from searchtune.errors import EnvironmentFault, SearchtuneError, environment_fault


def build_parser() -> argparse.ArgumentParser:
    from searchtune.cli import models_command, sample_data_command, submit
    from searchtune.cli import run as pipeline_cli
    from searchtune.serving import cli as serving_cli

    parser = argparse.ArgumentParser(
        prog="searchtune",
        description="Retrain, evaluate, gate and register a search-relevance model with Kubeflow Pipelines.",
        epilog="Each command's flags: searchtune COMMAND --help. A first run: searchtune run (on the bundled sample data).",
    )
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log, here and in every pipeline step (default INFO)")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    pipeline_cli.add_run_parser(commands)
    pipeline_cli.add_compile_parser(commands)
    submit.add_parser(commands)
    models_command.add_parser(commands)
    serving_cli.add_parser(commands)
    sample_data_command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from searchtune.orchestration.local_run import PipelineFailed

    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # --help into a pipe whose reader went away
        return _reader_gone()
    logs.setup(args.log_level)
    try:
        return int(args.func(args) or 0)
    except EnvironmentFault as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        return exit_codes.ENVIRONMENT
    except SearchtuneError as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        return exit_codes.USER_ERROR
    except PipelineFailed as error:
        print(f"searchtune: internal error: {error}", file=sys.stderr)
        return exit_codes.INTERNAL_ERROR
    except BrokenPipeError:
        return _reader_gone()
    except OSError as error:
        fault = environment_fault(error)
        if fault is None:
            raise
        print(f"searchtune: error: {fault}", file=sys.stderr)
        return exit_codes.ENVIRONMENT
    except KeyboardInterrupt:
        print("searchtune: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED


def _reader_gone() -> int:
    """The reader closed the pipe (`searchtune models show ... | head`): what it read is the answer."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
