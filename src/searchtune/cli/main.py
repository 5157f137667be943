"""The ``searchtune`` command: run, compile, submit the pipeline and manage the registry.

Each sub-command lives next to the code it drives; this module only wires them
into one argparse tree and turns ``SearchtuneError`` into a one-line message.
"""

import argparse
import sys

from searchtune import logs
from searchtune.errors import SearchtuneError


def build_parser() -> argparse.ArgumentParser:
    from searchtune.cli import models as registry_cli
    from searchtune.cli import run as pipeline_cli
    from searchtune.data import sample_data
    from searchtune.orchestration import cluster, submit
    from searchtune.serving import cli as serving_cli

    parser = argparse.ArgumentParser(
        prog="searchtune",
        description="Retrain, evaluate, gate and register a search-relevance model with Kubeflow Pipelines.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline_cli.add_run_parser(commands)
    pipeline_cli.add_compile_parser(commands, cluster)
    submit.add_parser(commands)
    registry_cli.add_parser(commands)
    serving_cli.add_parser(commands)
    sample_data.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    try:
        return int(args.func(args) or 0)
    except SearchtuneError as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
