"""The CLI's help reads well: every option explained in plain text, ``run --help`` in the parameter groups
of ``searchtune.params`` with the defaults a run uses, and a reader that closes the pipe ends a command quietly.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from registry_helpers import seed_registry  # noqa: E402

from searchtune.cli import main as cli  # noqa: E402
from searchtune.cli import parameters  # noqa: E402
from searchtune.cli import run as run_cli  # noqa: E402
from searchtune.cli.help_text import first_paragraph, plain_text  # noqa: E402
from searchtune.params import RunParameters  # noqa: E402

# reStructuredText (``x``, :func:`x`) and Markdown (`x`) inline markup: a terminal shows it raw.
MARKUP = re.compile(r"`|:[a-z]+:`")


def commands(parser: argparse.ArgumentParser, path: str = "searchtune") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree, with the command line that reaches it."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, f"{path} {name}")
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if not isinstance(action, argparse._SubParsersAction)]


def help_of(command: list[str], columns: int = 100) -> str:
    parser = cli.build_parser()
    for name in command:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    os.environ["COLUMNS"] = str(columns)  # argparse reads the width when it formats
    try:
        return parser.format_help()
    finally:
        del os.environ["COLUMNS"]


def sections(text: str) -> dict[str, str]:
    """A help text's sections by title: a line that ends in ':' at the left margin starts one."""
    found, title = {}, "usage"
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][^:]*:", line):
            title = line[:-1]
        found[title] = found.get(title, "") + line + "\n"
    return found


def test_every_option_of_every_command_has_help_in_plain_text():
    tree = commands(cli.build_parser())
    assert {"searchtune run", "searchtune submit", "searchtune models promote", "searchtune serve"} <= {p for p, _ in tree}
    missing, marked, contradicted = [], [], []
    for path, parser in tree:
        for action in options(parser):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {name}")
            elif "required" in action.help.lower() and "(default" in action.help.lower():
                contradicted.append(f"{path} {name}: {action.help}")
        for line in parser.format_help().splitlines():
            if MARKUP.search(line):
                marked.append(f"{path}: {line.strip()}")
    assert not missing, f"options without help: {missing}"
    assert not marked, "markup in help text:\n" + "\n".join(marked)
    assert not contradicted, "required and a default at once:\n" + "\n".join(contradicted)


def test_docstrings_become_plain_text():
    assert plain_text("``REF`` = ``<registry>/<model>``; see :func:`searchtune.cli.main` or `make run`") == \
        "REF = <registry>/<model>; see searchtune.cli.main or 'make run'"
    assert first_paragraph("Where ``x`` goes\n  (the step).\n\nMore.") == "Where x goes (the step)."


def test_run_help_is_grouped_by_the_parameter_classes_in_the_order_a_user_needs_them():
    text = help_of(["run"])
    found = sections(text)
    titles = [title for title in found if title.endswith(" parameters")]
    assert titles == ["ingest parameters", "registry parameters", "model parameters", "train parameters",
                      "gate parameters", "index parameters", "notify parameters"]
    shown = {name: title for title in titles for name in RunParameters.model_fields
             if re.search(rf"^  {parameters.flag(name)}\b", found[title], flags=re.M)}
    assert set(shown) == set(RunParameters.model_fields)  # each flag in exactly one group, none left out
    assert shown["data"] == "ingest parameters" and shown["epochs"] == "train parameters"
    assert shown["base_model"] == "model parameters" and shown["registry_root"] == "registry parameters"
    groups = dict((cls.__name__, names) for cls, names in parameters.parameter_groups())
    assert set(groups["TrainParams"]).isdisjoint(groups["ModelParams"]) and "epochs" in groups["TrainParams"]
    # The usage line names the main parameters, not all of them.
    usage = text.split("\n\n")[0]
    assert "--data" in usage and "[PARAMETER FLAGS]" in usage and "--lora-alpha" not in usage
    assert len(usage.strip().splitlines()) <= 6, usage


@pytest.mark.parametrize("command", [["run"], ["submit"]])
def test_each_parameter_shows_the_default_this_command_uses(command):
    text = " ".join(help_of(command, columns=400).split())
    local = {"registry_root": run_cli.DEFAULT_REGISTRY} if command == ["run"] else {}
    for name, field in RunParameters.model_fields.items():
        default = local.get(name, field.default)
        if command == ["submit"] and name in ("data", "registry_root"):
            assert f"{parameters.flag(name)} TEXT" in text and "(required)" in text
        elif default != "":
            assert f"(default {parameters.shown(default)}" in text, name
    assert "(default off)" in text and "(default 0.0005)" in text  # a switch and a small float as a user types them
    assert "Required." not in text
    assert "positive_threshold" not in text and "--positive-threshold is ignored" in text  # flags, not field names


def test_run_help_shows_the_demo_budget_the_run_applies_without_data():
    text = " ".join(help_of(["run"], columns=400).split())
    assert run_cli.SAMPLE_DATA_BUDGET, "the bundled sample has a demo budget"
    for name, value in run_cli.SAMPLE_DATA_BUDGET.items():
        declared = parameters.shown(RunParameters.model_fields[name].default)
        budget = f"; {parameters.shown(value)} on the bundled sample" if parameters.shown(value) != declared else ""
        assert f"{parameters.flag(name)} " in text and f"(default {declared}{budget})" in text, name
    # What the help promises is what the run does: with no --data the budget, with --data the declared defaults.
    parser = cli.build_parser()
    sample = run_cli.run_parameters(parser.parse_args(["run"]))
    assert {name: getattr(sample, name) for name in run_cli.SAMPLE_DATA_BUDGET} == run_cli.SAMPLE_DATA_BUDGET
    own = run_cli.run_parameters(parser.parse_args(["run", "--data", "logs.csv"]))
    assert {name: getattr(own, name) for name in run_cli.SAMPLE_DATA_BUDGET} == \
        {name: RunParameters.model_fields[name].default for name in run_cli.SAMPLE_DATA_BUDGET}


def test_help_is_wrapped_to_the_terminal_without_cutting_a_flag_and_keeps_the_exit_code_table():
    width = 80
    for command in (["run"], ["submit"]):
        lines = help_of(command, columns=width).splitlines()
        assert max(map(len, lines)) <= width, max(lines, key=len)
        cut = [line for line in lines if re.search(r"[A-Za-z]-$", line)]  # --positive-|threshold, searchtune-|relevance
        assert not cut, cut
    submit_usage = help_of(["submit"]).split("\n\n")[0]
    assert "[CLUSTER FLAGS]" in submit_usage and "--gpu-count" not in submit_usage and "--host URL" in submit_usage
    assert "\n  3  the run finished but its candidate did not become production" in help_of(["run"], columns=120)


@pytest.mark.parametrize("command", [["run", "--help"], ["--help"], ["models", "--help"], ["models", "show", "@1"],
                                     ["models", "list"], ["models", "candidates"]], ids=" ".join)
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(command, tmp_path):
    """``searchtune models show ... | head``: the reader is gone before the first byte; no traceback, exit 0."""
    registry = seed_registry(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    result = subprocess.run([sys.executable, "-m", "searchtune.cli", *command], stdout=write_end, stderr=subprocess.PIPE,
                            text=True, timeout=120, cwd=tmp_path, env={**os.environ, "SEARCHTUNE_REGISTRY": str(registry)})
    os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")
