"""`searchtune run` against a careless or hostile user: every bad parameter or environment is
refused with one line and exit code 2, before any training, and the registry stays as it was.

Parameter errors are caught by the CLI itself (no step starts); problems only the preflight
step can see (the registry, the base model, the LoRA targets, the input location) stop the
run in its first step.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from searchtune.registry import ModelRegistry


def run_cli(*args: str, registry: Path, output: Path, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "searchtune.cli", "run", "--registry", str(registry), "--output-dir", str(output), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return result, time.monotonic() - started


def ephemeral_step_sources() -> set[Path]:
    """The step sources kfp.local left in the system's temporary folder."""
    return set(Path(tempfile.gettempdir()).glob("*/ephemeral_component.py"))


def tree_digest(root: Path) -> dict:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def seeded_registry(tmp_path) -> Path:
    """A registry holding one real version and a production alias."""
    root = tmp_path / "registry"
    model = tmp_path / "model"
    (model / "adapter").mkdir(parents=True)
    (model / "adapter" / "weights.bin").write_bytes(b"\x01" * 1000)
    registry = ModelRegistry(str(root))
    registry.register_version("searchtune-relevance", str(model), {"run_id": "seed"})
    registry.move_alias("searchtune-relevance", 1, expected=None, actor="test", reason="seed")
    return root


BAD_PARAMETERS = [
    (["--lora-r", "-1"], "--lora-r -1: must be >= 0"),
    (["--min-auc", "1.5"], "--min-auc 1.5: must be <= 1"),
    (["--min-auc", "-1"], "--min-auc -1: must be >= 0"),
    (["--min-auc", "nan"], "--min-auc nan: must be a finite number"),
    (["--max-auc-drop", "inf"], "--max-auc-drop inf: must be a finite number"),
    (["--max-reject-ratio", "2"], "--max-reject-ratio 2: must be <= 1"),
    (["--epochs", "0"], "--epochs 0: must be >= 1"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--learning-rate", "0"], "--learning-rate 0: must be > 0"),
    (["--max-length", "4"], "--max-length 4: must be >= 8"),
    (["--confidence", "1"], "--confidence 1: must be < 1"),
    (["--bootstrap-resamples", "10"], "--bootstrap-resamples 10: must be >= 1000"),
    (["--model-name", "../escape"], "--model-name '../escape': may only hold letters"),
    (["--text-columns", " , "], "text_columns names no column"),
    (["--positive-threshold", "7"], "positive_threshold 7 must lie in"),
    (["--label-min", "3", "--label-max", "1"], "label_min 3 must be below label_max 1"),
    (["--init-from", "../model"], "--init-from '../model': must be a registry version (3, v3), 'latest' or an alias"),
]


@pytest.mark.parametrize(("args", "message"), BAD_PARAMETERS, ids=[" ".join(a) for a, _ in BAD_PARAMETERS])
def test_a_bad_parameter_is_refused_at_once_with_one_line(args, message, seeded_registry, tmp_path):
    before = tree_digest(seeded_registry)
    result, seconds = run_cli(*args, registry=seeded_registry, output=tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("searchtune: error: invalid parameters: ") and message in last, last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "no step may start"
    assert tree_digest(seeded_registry) == before
    assert seconds < 60


def test_a_choice_outside_the_list_is_refused_by_the_flag_itself(seeded_registry, tmp_path):
    result, _ = run_cli("--architecture", "tree", registry=seeded_registry, output=tmp_path / "runs")
    assert result.returncode == 2 and "invalid choice: 'tree'" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_what_only_the_preflight_step_can_see_stops_the_run_in_its_first_step(seeded_registry, tmp_path):
    """Each of these fails in the preflight step: nothing is ingested or trained, nothing registered."""
    read_only = tmp_path / "read-only-registry"
    read_only.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,product_title\n1,Cordless Drill\n")
    cases = [
        (["--registry", str(a_file / "registry")], "a folder on this path is a file"),
        (["--base-model", str(tmp_path / "no-such-model")], "no-such-model"),
        (["--lora-targets", "query,attention_everything"], "lora_targets attention_everything name no module"),
        (["--data", str(tmp_path / "nothing-here" / "*.parquet")], "no files found"),
        (["--catalog", str(catalog)], f"{catalog}: missing column(s) 'product_uid', 'brand'; columns found: 'sku', 'product_title'"),
        (["--catalog", str(tmp_path / "no-catalog-here.csv")], "no-catalog-here.csv"),
        (["--init-from", "7"], "init_from='7': model 'searchtune-relevance' has no version 7; available: v1"),
        # The seeded version is no searchtune model (no searchtune_model.json): it cannot be continued.
        (["--init-from", "production"], "init_from='production': v1 of 'searchtune-relevance' has no file searchtune_model.json"),
    ]
    before = tree_digest(seeded_registry)
    kfp_sources_before = ephemeral_step_sources()
    for args, message in cases:
        result, seconds = run_cli(*args, registry=seeded_registry, output=tmp_path / "runs")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert last.startswith("searchtune: error: step preflight failed: ") and message in last, (args, last)
        assert "Traceback" not in result.stderr, args
        assert seconds < 120, (args, seconds)
    assert tree_digest(seeded_registry) == before
    # Each run's folder holds pipeline.log and kfp.local's run folder, whose step folders are what ran.
    steps = {p.name for run in (tmp_path / "runs").iterdir() for kfp_run in run.iterdir() if kfp_run.is_dir()
             for p in kfp_run.iterdir()}
    assert steps <= {"preflight", "notify"}, steps  # notify: the exit handler, which runs however the run ends
    # kfp.local writes each step's source into a temporary folder it never removes; a run removes them.
    assert ephemeral_step_sources() <= kfp_sources_before


@pytest.mark.slow
def test_two_runs_sharing_an_output_folder_and_a_registry_each_report_their_own(tmp_path):
    """Started together on one machine: each finishes with its own records; one is promoted, the other says why not."""
    registry, output = tmp_path / "registry", tmp_path / "runs"
    command = [sys.executable, "-m", "searchtune.cli", "run", "--registry", str(registry), "--output-dir", str(output),
               "--epochs", "1", "--max-train-rows", "256", "--no-require-beat-base"]
    children = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"}) for seed in (1, 2)]
    outcomes = [child.communicate(timeout=1800) + (child.returncode,) for child in children]
    assert sorted(code for _, _, code in outcomes) == [0, 3], [err[-2000:] for _, err, _ in outcomes]
    from searchtune.pipelines.retraining_pipeline import PIPELINE_NAME

    from searchtune import records

    run_ids = set()
    for out, _err, code in outcomes:
        run_id = out.split("(run ", 1)[1].split(")", 1)[0]
        run_ids.add(run_id)
        (kfp_run,) = [d for d in (output / run_id).iterdir() if d.is_dir() and d.name.startswith(PIPELINE_NAME)]
        run_record = records.RunRecord.read(str(kfp_run / "preflight" / "run"))
        registration = records.Registration.read(str(kfp_run / "register" / "registration"))
        assert registration.promoted == (code == 0)
        assert f"version {registration.version}" in out and str(output / run_id) in out  # its own paths, its own version
        lineage = records.Lineage.from_bytes(
            ModelRegistry(str(registry)).read_file("searchtune-relevance", registration.version, "lineage.json"), "lineage")
        assert lineage.run_id == run_record.run_id == kfp_run.name
    assert len(run_ids) == 2
    production = ModelRegistry(str(registry)).production("searchtune-relevance")
    assert production["version"] in (1, 2)


@pytest.mark.slow
def test_faults_of_the_input_stop_the_run_before_training_with_one_line(seeded_registry, tmp_path):
    """A nested query column, a truncated archive, a symbolic link loop, and clean data with fewer test queries
    than the gate needs (it could never bless a model trained on it): one line naming the file and
    the cause, exit 2, no traceback, nothing trained, the registry byte-identical (tests/test_input_faults.py
    has each case and more at the ingest step's level)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": f"query {q} rheostat", "title": f"Product {q}-{p}", "brand": "Brand", "rel": 1.0 + 2 * (p % 2)}
            for q in range(60) for p in range(5)]
    table = pa.Table.from_pylist(rows)
    nested = tmp_path / "nested.parquet"
    pq.write_table(table.set_column(0, "q", pa.array([[row["q"], "x"] for row in rows])), nested)
    text = "q,title,brand,rel\n" + "".join(f"{r['q']},{r['title']},{r['brand']},{r['rel']}\n" for r in rows)
    archive = gzip.compress(text.encode())
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(archive[: len(archive) // 2])
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "day1.csv").write_text(text)
    small = tmp_path / "small.csv"
    small.write_text(text)
    os.symlink("day3.csv", folder / "day2.csv")
    os.symlink("day2.csv", folder / "day3.csv")
    mapping = ["--query-column", "q", "--text-columns", "title,brand", "--label-column", "rel"]
    cases = [
        (nested, "step ingest failed: ", f"{nested}: the query column 'q' holds a list per row (list<element: string>)"),
        (truncated, "step ingest failed: ", f"{truncated}: truncated compressed data: the file ends at byte"),
        (folder, "step preflight failed: ", "a symbolic link loop (it leads back to itself through day"),
        (small, "step ingest failed: ", "test queries < min_test_queries 30: the gate could never bless a model"),
    ]
    before = tree_digest(seeded_registry)
    for data, step, message in cases:
        output = tmp_path / f"runs-{data.name}"
        result, _ = run_cli("--data", str(data), *mapping, registry=seeded_registry, output=output)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2, (data, result.stderr[-2000:])
        assert last.startswith(f"searchtune: error: {step}") and message in last, (data, last)
        assert "Traceback" not in result.stderr, data
        steps = {p.name for run in output.iterdir() for kfp_run in run.iterdir() if kfp_run.is_dir() for p in kfp_run.iterdir()}
        assert steps <= {"preflight", "ingest", "notify"}, (data, steps)
    assert tree_digest(seeded_registry) == before
