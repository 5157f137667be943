"""A broken ``production``: found by ``verify --registry``, stopped in preflight, repaired with one command.

The wedged case of issue 21: ``production`` points at a version whose manifest is gone and
no version is left, so every run is refused and nothing can be promoted or rolled back.
On a local folder and a real GCS emulator.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import ModelRegistry

sys.path.insert(0, os.path.dirname(__file__))  # tests/ is no package (pytest --import-mode=importlib)
from registry_helpers import MODEL, register, seed_registry, snapshot  # noqa: E402


def cli(*args: str) -> subprocess.CompletedProcess:
    """``searchtune models ...`` as a real command."""
    return subprocess.run([sys.executable, "-m", "searchtune.cli", "models", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def models(capsys, *args: str) -> tuple[int, str, str]:
    """``searchtune models ...`` in this process: the CLI's parser, handler and one-line error, faster."""
    from searchtune.cli.main import build_parser

    parsed = build_parser().parse_args(["models", *args])
    try:
        code = parsed.func(parsed)
    except SearchtuneError as error:
        print(f"searchtune: error: {error}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(action) -> str:
    with pytest.raises(SearchtuneError) as error:
        action()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_production_left_without_any_version_is_reported_and_cleared_with_one_command(registry_root, tmp_path, capsys):
    registry = ModelRegistry(registry_root)
    ref = f"{registry_root}/{MODEL}"
    register(registry, tmp_path, "a")
    registry.promote(MODEL, 1, actor="setup", reason="first")
    storage.delete(storage.join(registry.version_uri(MODEL, 1), "MANIFEST.json"))  # the version is gone
    other = registry.register_version("other", str(tmp_path / "files-a"), {"run_id": "o"})  # a healthy model
    registry.promote("other", other["version"], actor="setup", reason="first")
    assert registry.models() == ["other"] and registry.models(stored=True) == ["other", MODEL]

    result = cli("verify", "--registry", registry_root)  # every model, the broken one included
    assert result.returncode == 4, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"other  ({registry.root})" in lines and f"{MODEL}  ({registry.root})" in lines
    assert "  @production  BROKEN  points at v1, which has no manifest (claimed but never completed)" in lines
    assert f"  @production  fix     searchtune models promote {ref} --repair (no version left: removes the alias)" in lines
    assert lines[-1] == "1 problem(s) found"
    code, out, _err = models(capsys, "list", "--registry", registry_root)
    assert code == 0 and f"{MODEL}  ({registry.root}, 0 version(s), production: v1, which is GONE" in out

    before = snapshot(registry_root)
    statement = (f"has no version at all in {registry.root}; start again with 'searchtune models promote {ref} "
                 "--repair' (removes the alias, keeps its history), then run the pipeline")
    message = one_line_error(lambda: registry.check_writable(MODEL))  # what preflight says to every run
    assert message.startswith(f"{registry.layout.alias(MODEL, 'production')}: points at v1, which has no manifest, "
                              f"and '{MODEL}' has no version at all"), message
    assert statement in message
    for args in (["promote", ref, "1"], ["promote", ref, "1", "--repair"], ["rollback", ref], ["rollback", ref, "--repair"]):
        code, out, err = models(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and statement in err, (args, err)
    assert snapshot(registry_root) == before  # every refused command left the registry as it was

    code, out, err = models(capsys, "promote", ref, "--repair", "--reason", "start over", "--actor", "ops")
    assert code == 0, err
    assert out.strip() == (f"{MODEL}@production: removed (it points at v1, which has no manifest; '{MODEL}' had no "
                           "version; history #2 records it); the next run starts as a first run and its blessed "
                           "model becomes production")
    assert registry.alias(MODEL) is None
    registry.check_writable(MODEL)  # runs start again
    cleared = registry.alias_history(MODEL)[-1]
    assert (cleared["seq"], cleared["version"], cleared["previous_version"], cleared["moved_by"]) == (2, None, 1, "ops")
    # The first run after it: a new version, production by compare-and-swap from "nothing", history continued.
    version = register(registry, tmp_path, "b")["version"]
    record = registry.move_alias(MODEL, version, expected=None, actor="run", reason="blessed")
    assert (version, record["seq"], record["previous_version"]) == (2, 3, None)
    assert [h["seq"] for h in registry.alias_history(MODEL)] == [1, 2, 3]
    report = registry.verify(MODEL)
    assert report.ok and report.incomplete == [1], report.problems()


def test_production_on_a_missing_version_is_repointed_with_promote_repair(registry_root, tmp_path, capsys):
    registry = ModelRegistry(registry_root)
    ref = f"{registry_root}/{MODEL}"
    for tag in "ab":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 1, actor="setup", reason="first")
    registry.promote(MODEL, 2, actor="setup", reason="second")
    storage.delete(storage.join(registry.version_uri(MODEL, 2), "MANIFEST.json"))
    message = one_line_error(lambda: registry.check_writable(MODEL))
    assert message.endswith(f"points at v2, which has no manifest; point it at an existing version (v1): "
                            f"'searchtune models promote {ref} VERSION'"), message
    code, out, err = models(capsys, "promote", ref, "--repair")  # no VERSION while versions exist: say which
    assert code == 2 and f"say which version production should point at (v1): 'searchtune models promote {ref} " \
                         "VERSION --repair'" in err
    code, out, err = models(capsys, "promote", ref, "1", "--repair", "--reason", "v2 lost its manifest")
    assert (code, out.strip()) == (0, f"{MODEL}@production: v2 -> v1"), err
    registry.check_writable(MODEL)
    assert registry.verify(MODEL).ok


def test_check_production_finds_missing_and_truncated_files_without_reading_them(registry_root, tmp_path):
    registry = ModelRegistry(registry_root)
    ref = f"{registry_root}/{MODEL}"
    assert registry.check_production(MODEL) is None  # no production yet: nothing to check
    for tag in "ab":
        register(registry, tmp_path, tag)
    registry.promote(MODEL, 1, actor="setup", reason="first")
    assert registry.check_production(MODEL)["version"] == 1
    registry.promote(MODEL, 2, actor="setup", reason="second")
    weights = storage.join(registry.version_uri(MODEL, 2), "adapter", "adapter_model.safetensors")
    storage.write_bytes(weights, b"short")
    before = snapshot(registry_root)
    message = one_line_error(lambda: registry.check_production(MODEL))
    assert message == (f"production of '{MODEL}' is v2, whose files do not match its manifest: "
                       "adapter/adapter_model.safetensors: 5 bytes, manifest says 500; point production at a sound "
                       f"version: 'searchtune models rollback {ref}' (to v1), 'searchtune models promote {ref} VERSION'; "
                       f"details: 'searchtune models verify {ref}'")
    assert snapshot(registry_root) == before  # a check, nothing written
    for name in ("tokenizer/vocab.txt", "searchtune_model.json", "notes.json"):
        storage.delete(storage.join(registry.version_uri(MODEL, 2), name))
    message = one_line_error(lambda: registry.check_production(MODEL))
    assert ("adapter/adapter_model.safetensors: 5 bytes, manifest says 500; notes.json: missing (and 2 more); "
            in message), message


@pytest.mark.slow
def test_a_run_stops_in_preflight_when_the_production_weights_are_missing(tmp_path):
    root = seed_registry(tmp_path)
    (root / "searchtune-relevance" / "versions" / "1" / "adapter" / "weights.bin").unlink()
    before = snapshot(str(root))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "searchtune.cli", "run", "--registry", str(root), "--output-dir",
                             str(tmp_path / "runs"), "--epochs", "1"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.monotonic() - started
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    assert last.startswith("searchtune: error: step preflight failed: production of 'searchtune-relevance' is v1, "
                           "whose files do not match its manifest: adapter/weights.bin: missing; "), last
    assert "Traceback" not in result.stderr and seconds < 120, seconds
    assert snapshot(str(root)) == before
    steps = {p.name for run in Path(tmp_path / "runs").iterdir() for kfp_run in run.iterdir() if kfp_run.is_dir()
             for p in kfp_run.iterdir()}
    assert "preflight" in steps and steps <= {"preflight", "notify"}, steps  # nothing ingested, nothing trained
