"""The compiled pipeline as a cluster gets it: its outputs carry the verdict, notify is the exit
handler around every other step, `data` has no default, and fine-tune's cache key holds only
what decides the model. (The outputs' values under kfp.local: tests/test_notify.py.)"""

import pytest
import yaml

from searchtune.errors import SearchtuneError
from searchtune.orchestration.cluster import ClusterSettings
from searchtune.orchestration.local_run import compile_pipeline
from searchtune.orchestration.submission_plan import plan, required_inputs
from searchtune.params import NotifyParams

STEPS_IN_THE_EXIT_HANDLER = {"preflight", "ingest", "tokenize", "finetune", "champion", "evaluate", "condition-branches-2"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[str, dict]:
    path = str(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    compile_pipeline(path)
    with open(path) as handle:
        return path, next(yaml.safe_load_all(handle))


def tasks_of(spec: dict, component: str) -> dict:
    return spec["components"][component]["dag"]["tasks"] if component != "root" else spec["root"]["dag"]["tasks"]


def test_the_verdict_is_a_pipeline_output_from_the_exit_handler(compiled):
    _, spec = compiled
    outputs = spec["root"]["outputDefinitions"]
    assert {name: value["parameterType"] for name, value in outputs["parameters"].items()} == {
        "verdict": "STRING", "gate": "STRING", "registered_version": "NUMBER_INTEGER", "reason": "STRING", "report": "STRING"}
    assert outputs["artifacts"]["verdict_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    selected = spec["root"]["dag"]["outputs"]
    assert {s["valueFromParameter"]["producerSubtask"] for s in selected["parameters"].values()} == {"notify"}
    assert selected["artifacts"]["verdict_metrics"]["artifactSelectors"][0]["producerSubtask"] == "notify"


def test_notify_runs_after_every_other_step_with_their_final_status(compiled):
    _, spec = compiled
    root = tasks_of(spec, "root")
    assert set(root) == {"exit-handler-1", "notify"}
    notify = root["notify"]
    assert notify["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert notify["dependentTasks"] == ["exit-handler-1"]
    inputs = notify["inputs"]["parameters"]
    assert inputs["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert inputs["notify_webhook"] == {"componentInputParameter": "notify_webhook"}
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"  # the id preflight records
    assert not notify["cachingOptions"].get("enableCache"), "a cached notify would post nothing"
    body = tasks_of(spec, root["exit-handler-1"]["componentRef"]["name"])
    assert set(body) == STEPS_IN_THE_EXIT_HANDLER


def test_the_webhook_url_stays_out_of_preflight(compiled):
    _, spec = compiled
    preflight = spec["components"]["comp-preflight"]["inputDefinitions"]["parameters"]
    assert not set(NotifyParams.model_fields) & set(preflight), "run.json and the lineage would hold the credential"


def test_data_and_the_registry_have_no_default(compiled):
    path, spec = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in inputs["data"] and not inputs["data"].get("isOptional")
    assert required_inputs(path) == ["data", "registry_root"]
    with pytest.raises(SearchtuneError, match=r"the pipeline has no default for data: give each a value \(e.g. --param data=...\)"):
        plan(path, "http://127.0.0.1:9", params=["registry_root=gs://b/registry"])
    with pytest.raises(SearchtuneError, match="no default for data, registry_root"):
        plan(path, "http://127.0.0.1:9", params=["data="])
    sent = plan(path, "http://127.0.0.1:9", arguments={"registry_root": "gs://b/registry"}, params=["data=gs://b/logs/*"])
    assert sent.parameters == {"registry_root": "gs://b/registry", "data": "gs://b/logs/*"}


def test_finetune_is_cached_on_what_decides_the_model_and_not_on_the_run(compiled):
    _, spec = compiled
    body = tasks_of(spec, "comp-exit-handler-1")
    finetune = body["finetune"]
    assert finetune["cachingOptions"].get("enableCache")
    assert "run_id" not in finetune["inputs"]["parameters"]
    runtime = [name for name, value in finetune["inputs"]["parameters"].items()
               if "{{$" in str(value.get("runtimeValue", {}).get("constant", ""))]
    assert runtime == [], f"placeholders change every run and defeat the cache: {runtime}"
    assert finetune["inputs"]["parameters"]["init_from"]["taskOutputParameter"]["producerTask"] == "preflight"
    for cached in ("ingest", "tokenize"):
        assert body[cached]["cachingOptions"].get("enableCache"), cached
    for uncached in ("preflight", "champion", "evaluate"):
        assert not body[uncached]["cachingOptions"].get("enableCache"), uncached


def test_no_cache_turns_off_every_task_notify_included(tmp_path):
    path = compile_pipeline(str(tmp_path / "p.yaml"), ClusterSettings(enable_caching=False))
    with open(path) as handle:
        spec = next(yaml.safe_load_all(handle))
    steps = {name: task for c in [spec["root"], *spec["components"].values()]
             for name, task in c.get("dag", {}).get("tasks", {}).items() if "cachingOptions" in task}
    assert set(steps) == {"preflight", "ingest", "tokenize", "finetune", "champion", "evaluate", "index", "register",
                          "record-refusal", "notify"}
    assert not any(task["cachingOptions"].get("enableCache") for task in steps.values())
