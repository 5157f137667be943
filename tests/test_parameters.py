"""Each run parameter is declared once (searchtune.params); everything else agrees with it."""

import contextlib
import inspect
import io
import typing

import pytest
import yaml

from searchtune import params
from searchtune.cli import main as cli
from searchtune.errors import SearchtuneError
from searchtune.params import (
    GateParams,
    IndexParams,
    IngestParams,
    ModelParams,
    NotifyParams,
    RegistryParams,
    RunParameters,
    TrainParams,
)

KFP_TYPES = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}


def kfp_type(annotation) -> str:
    return "String" if typing.get_origin(annotation) is typing.Literal else KFP_TYPES[annotation]


def components() -> dict:
    from searchtune.components.champion.component import champion
    from searchtune.components.evaluate.component import evaluate
    from searchtune.components.finetune.component import finetune
    from searchtune.components.index.component import index
    from searchtune.components.ingest.component import ingest
    from searchtune.components.preflight.component import preflight
    from searchtune.components.refusal.component import record_refusal
    from searchtune.components.register.component import register
    from searchtune.components.tokenize.component import tokenize

    return {"preflight": preflight, "ingest": ingest, "tokenize": tokenize, "finetune": finetune, "champion": champion,
            "evaluate": evaluate, "index": index, "register": register, "refusal": record_refusal}


def parameter_inputs(component) -> dict[str, str]:
    """The component's plain (non-artifact) inputs: name -> KFP type."""
    return {name: spec.type for name, spec in component.component_spec.inputs.items() if spec.type in KFP_TYPES.values()}


def test_the_groups_make_up_the_run_parameters_without_overlap():
    groups = [set(IngestParams.model_fields), set(TrainParams.model_fields), set(GateParams.model_fields),
              set(IndexParams.model_fields), set(RegistryParams.model_fields), set(NotifyParams.model_fields)]
    assert set().union(*groups) == set(RunParameters.model_fields)
    assert sum(map(len, groups)) == len(RunParameters.model_fields)
    assert set(ModelParams.model_fields) <= set(TrainParams.model_fields)
    assert all(field.description for field in RunParameters.model_fields.values())


def test_pipeline_inputs_are_the_run_parameters_with_their_defaults_and_descriptions(tmp_path):
    from searchtune.pipelines.retraining_pipeline import build_pipeline

    from searchtune.orchestration.local_run import compile_pipeline

    signature = inspect.signature(build_pipeline().pipeline_func)
    assert set(signature.parameters) == set(RunParameters.model_fields)
    for name, field in RunParameters.model_fields.items():
        parameter = signature.parameters[name]
        assert kfp_type(parameter.annotation) == kfp_type(field.annotation), name
        if name in ("registry_root", "data"):  # required in the KFP UI's run form: no run without a registry or data
            assert parameter.default is inspect.Parameter.empty
        else:
            assert parameter.default == field.default, name
    spec = next(yaml.safe_load_all(open(compile_pipeline(str(tmp_path / "p.yaml")))))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert {name: value.get("description") for name, value in inputs.items()} == params.descriptions()
    assert [name for name, value in inputs.items() if not value.get("isOptional")] == ["data", "registry_root"]


@pytest.mark.parametrize(("step", "group", "others"), [
    ("preflight", RunParameters, {"run_id"}),  # less notify_webhook, a credential kept out of run.json and lineage
    ("ingest", IngestParams, {"data_version", "min_test_queries"}),  # the gate's, checked before training
    ("tokenize", ModelParams, set()),
    ("finetune", TrainParams, {"registry_root", "model_name", "checkpoint_root"}),  # no run_id: it would defeat the cache
    ("evaluate", GateParams, {"run_id"}),
    ("champion", None, {"registry_root", "model_name"}),
    ("index", IndexParams, {"text_columns"}),
    ("register", None, {"registry_root", "model_name"}),
    ("refusal", None, {"registry_root", "model_name"}),
])
def test_each_component_takes_its_group_with_the_declared_types(step, group, others):
    inputs = parameter_inputs(components()[step])
    expected = set(group.model_fields) - set(NotifyParams.model_fields) if group else set()
    assert set(inputs) == expected | others
    for name, kind in inputs.items():
        if name in RunParameters.model_fields:
            assert kind == kfp_type(RunParameters.model_fields[name].annotation), (step, name)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_every_parameter_is_a_flag_with_its_description_in_the_help(command, capsys):
    """The defaults shown and the grouping: tests/test_cli_help.py."""
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, field in RunParameters.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        assert field.description[:25] in text, name


def test_bad_values_are_refused_with_one_line_naming_each_parameter():
    bad = {"min_auc": 1.5, "max_auc_drop": float("nan"), "lora_r": -1, "epochs": 0, "architecture": "tree",
           "max_reject_ratio": 2, "model_name": "a b"}
    with pytest.raises(SearchtuneError) as caught:
        params.parse(RunParameters, bad, flag_style=True)
    message = str(caught.value)
    assert "\n" not in message
    for flag in ("--min-auc 1.5", "--max-auc-drop nan", "--lora-r -1", "--epochs 0", "--architecture 'tree'",
                 "--max-reject-ratio 2", "--model-name 'a b'"):
        assert flag in message, flag
    with pytest.raises(SearchtuneError, match="positive_threshold 5 must lie in"):
        params.parse(RunParameters, {"positive_threshold": 5})
    with pytest.raises(SearchtuneError, match="label_min 3 must be below label_max 1"):
        params.parse(RunParameters, {"label_min": 3, "label_max": 1})
    assert params.parse(RunParameters, {"positive_threshold": 5, "binary_labels": True}).binary_labels
