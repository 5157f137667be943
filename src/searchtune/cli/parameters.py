"""Command-line flags derived from ``searchtune.params``: one flag per run parameter.

The flag, its type, choices, default and help text all come from the parameter's
declaration, so ``searchtune run --help`` can never disagree with the pipeline.
"""

import argparse
import typing

from searchtune import params
from searchtune.params import RunParameters

# A shorter spelling kept for the registry flag, which every command names.
ALIASES = {"registry_root": ["--registry"]}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parameter_flags(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Add one flag per run parameter; a flag left out keeps the parameter's default.

    Args:
        parser: the sub-command's parser.
        defaults: defaults to show instead of the declared ones (e.g. the local registry).
    """
    group = parser.add_argument_group("run parameters (searchtune.params; the same as the pipeline's inputs)")
    shown = {**params.defaults(), **(defaults or {})}
    for name, field in RunParameters.model_fields.items():
        help_text = f"{field.description} (default: {shown[name]!r})"
        options = dict(dest=name, default=None, help=help_text)
        annotation = field.annotation
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is typing.Literal:
            options["choices"] = typing.get_args(annotation)
        else:
            options["type"] = annotation
            options["metavar"] = {str: "TEXT", int: "N", float: "X"}[annotation]
        group.add_argument(flag(name), *ALIASES.get(name, []), **options)


def given(args: argparse.Namespace) -> dict:
    """The run parameters the user set on the command line."""
    return {name: getattr(args, name) for name in RunParameters.model_fields if getattr(args, name, None) is not None}
