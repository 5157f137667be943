"""Command-line flags derived from ``searchtune.params``: one flag per run parameter, one group per parameter class.

The flag, its type, choices, default and help text all come from the parameter's
declaration, and each class of ``searchtune.params`` (ingest, registry, model, train, gate,
index, notify) is one section of ``--help``, so ``searchtune run --help`` can never disagree
with the pipeline.
"""

import argparse
import re
import textwrap
import typing

from pydantic import BaseModel

from searchtune import params
from searchtune.cli.help_text import first_paragraph
from searchtune.params import RunParameters

# A shorter spelling kept for the registry flag, which every command names.
ALIASES = {"registry_root": ["--registry"]}
# The order a user reaches for them: what to train on and where the model goes, then how it is
# trained and judged, then the extras. A parameter class missing here is shown after these.
GROUP_ORDER = (params.IngestParams, params.RegistryParams, params.ModelParams, params.TrainParams,
               params.GateParams, params.IndexParams, params.NotifyParams)
# Named in the usage line; the other parameters appear there as one placeholder (47 flags made it 30 lines).
IN_USAGE = ("data", "registry_root")
# Where help text starts: the longest parameter flags (--checkpoint-every-steps N) fit before it.
HELP_POSITION = 30
# A description names other parameters as the pipeline does (positive_threshold); on the command line
# they are flags (--positive-threshold). Only names with an underscore: 'seed' or 'data' are also words.
_PARAMETER_NAME = re.compile(r"\b(" + "|".join(name for name in RunParameters.model_fields if "_" in name) + r")\b")


def in_usage_as(action: argparse.Action, placeholder: str) -> argparse.Action:
    """Show ``action`` in a ``ParameterHelp`` usage line only as ``[placeholder]``, once for all that share it."""
    action.usage_placeholder = placeholder
    return action


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parameter_groups() -> list[tuple[type, list[str]]]:
    """Each parameter class of ``RunParameters`` with the fields it declares itself, in ``GROUP_ORDER``.

    ``TrainParams`` extends ``ModelParams``, so a class's own fields are its fields less its bases'.
    """
    classes = [cls for cls in RunParameters.__mro__[1:] if issubclass(cls, BaseModel) and cls.model_fields]
    classes.sort(key=lambda cls: GROUP_ORDER.index(cls) if cls in GROUP_ORDER else len(GROUP_ORDER))
    groups = []
    for cls in classes:
        inherited = set().union(*(base.model_fields for base in cls.__bases__ if issubclass(base, BaseModel)))
        groups.append((cls, [name for name in cls.model_fields if name not in inherited]))
    return groups


def shown(value) -> str:
    """A default as a user types it: 0.0005 not 5e-04, on/off for a switch, text unquoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_help(name: str, default, sample_default=None, required: bool = False) -> str:
    """The declaration's description and the default this command uses.

    An empty default is not shown: each such description says what empty means.
    """
    description = _PARAMETER_NAME.sub(lambda found: flag(found.group(0)), RunParameters.model_fields[name].description)
    if required:
        return f"{description} (required)"
    if default in ("", None):
        return description
    if sample_default is not None and sample_default != default:
        return f"{description} (default {shown(default)}; {shown(sample_default)} on the bundled sample)"
    return f"{description} (default {shown(default)})"


class ParameterHelp(argparse.HelpFormatter):
    """Mixed into the formatter of a command with parameter flags: a short usage line, and long lines wrapped.

    The usage names the command's own options and the main parameters, and shows each set of
    flags marked by ``in_usage_as`` (the other parameters, the cluster settings) as one
    placeholder: the sections below list them. Descriptions keep
    their own line breaks (an epilog's table) but a line wider than the terminal is wrapped;
    nothing is wrapped at a hyphen, so --positive-threshold stays one word.
    """

    def __init__(self, prog: str, *args, **kwargs):
        kwargs.setdefault("max_help_position", HELP_POSITION)
        super().__init__(prog, *args, **kwargs)

    def add_usage(self, usage, actions, groups, prefix=None):
        if usage is None:
            shown, placeholders = [], {}
            for action in actions:
                name = getattr(action, "usage_placeholder", None)
                if name is None:
                    shown.append(action)
                elif name not in placeholders:
                    placeholders[name] = argparse.Action(option_strings=[], dest=name, metavar=f"[{name}]")
            actions = shown + list(placeholders.values())
        super().add_usage(usage, actions, groups, prefix)

    def _fill_text(self, text, width, indent):
        lines = []
        for line in text.splitlines():
            hanging = indent + " " * (len(line) - len(line.lstrip()))  # a wrapped table row stays in its column
            lines.append(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=hanging, break_on_hyphens=False)
                         if line.strip() else "")
        return "\n".join(lines)

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # a flag is never cut at a '-'


def add_parameter_flags(parser: argparse.ArgumentParser, defaults: dict | None = None,
                        sample_defaults: dict | None = None, required: typing.Iterable[str] = ()) -> None:
    """Add one flag per run parameter, grouped by parameter class; a flag left out keeps the parameter's default.

    Args:
        parser: the sub-command's parser.
        defaults: defaults this command uses instead of the declared ones (e.g. the local registry).
        sample_defaults: defaults a run without ``--data`` uses (the bundled sample's demo budget).
        required: parameters this command refuses to go without; their help says so instead of a default.
    """
    shown_defaults = {**params.defaults(), **(defaults or {})}
    for cls, names in parameter_groups():
        group = parser.add_argument_group(f"{cls.__name__.removesuffix('Params').lower()} parameters",
                                          first_paragraph(cls.__doc__ or ""))
        for name in names:
            field = RunParameters.model_fields[name]
            help_text = flag_help(name, shown_defaults[name], (sample_defaults or {}).get(name), name in required)
            options = dict(dest=name, default=None, help=help_text)
            annotation = field.annotation
            if annotation is bool:
                options["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(annotation) is typing.Literal:
                options["choices"] = typing.get_args(annotation)
            else:
                options["type"] = annotation
                options["metavar"] = {str: "TEXT", int: "N", float: "X"}[annotation]
            action = group.add_argument(flag(name), *ALIASES.get(name, []), **options)
            if name not in IN_USAGE:
                in_usage_as(action, "PARAMETER FLAGS")
    # Keeps what the command's own formatter does (e.g. a raw epilog) and adds the usage and wrapping above.
    parser.formatter_class = type(f"ParameterHelp{parser.formatter_class.__name__}",
                                  (ParameterHelp, parser.formatter_class), {})


def given(args: argparse.Namespace) -> dict:
    """The run parameters the user set on the command line."""
    return {name: getattr(args, name) for name in RunParameters.model_fields if getattr(args, name, None) is not None}
