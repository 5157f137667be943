"""Shared pytest fixtures for tests/ and the per-component tests in components/."""

# --- storage/registry fixtures ---
# A real gcp-storage-emulator server (see tests/gcs_emulator.py) shared by the session,
# a fresh bucket per test, and a registry root that is either a local folder or a gs://
# prefix in that bucket, so registry tests run against both back ends.
import os as _os

import pytest as _pytest


@_pytest.fixture(scope="session")
def gcs_emulator():
    """The running emulator; STORAGE_EMULATOR_HOST points at it for this process and its children."""
    import importlib.util

    # pytest runs with --import-mode=importlib, so tests/ is not on sys.path: load by file.
    spec = importlib.util.spec_from_file_location("gcs_emulator", _os.path.join(_os.path.dirname(__file__), "tests", "gcs_emulator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    emulator = module.Emulator().start()
    previous = _os.environ.get("STORAGE_EMULATOR_HOST")
    _os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
    try:
        yield emulator
    finally:
        emulator.stop()
        if previous is None:
            _os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            _os.environ["STORAGE_EMULATOR_HOST"] = previous


@_pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """``gs://<fresh bucket>`` in the emulator."""
    return f"gs://{gcs_emulator.new_bucket()}"


@_pytest.fixture(params=["local", "gcs"])
def registry_root(request, tmp_path) -> str:
    """A registry root: a local folder, then a gs:// prefix in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return request.getfixturevalue("gcs_bucket") + "/registry"


# --- pipeline fixtures ---
# Small real data for the steps: the project's own generator, ingested once per session.
@_pytest.fixture(scope="session")
def sample_frame():
    from searchtune.data import sample_data

    return sample_data.generate_judgements(n_queries=160, seed=11)


@_pytest.fixture(scope="session")
def sample_file(sample_frame, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "judgements.parquet"
    sample_frame.to_parquet(path)
    return str(path)


@_pytest.fixture(scope="session")
def splits_dir(sample_file, tmp_path_factory) -> str:
    from searchtune.params import IngestParams
    from searchtune.steps import ingest

    out = tmp_path_factory.mktemp("splits")
    ingest.ingest(str(out), IngestParams(data=sample_file))
    return str(out)


@_pytest.fixture(scope="session")
def tokenized_dir(splits_dir, tmp_path_factory) -> str:
    from searchtune.params import ModelParams
    from searchtune.steps import tokenize

    out = tmp_path_factory.mktemp("tokenized")
    tokenize.tokenize(splits_dir, str(out), ModelParams(max_length=32))
    return str(out)


@_pytest.fixture(scope="session")
def trained_model_dir(tokenized_dir, tmp_path_factory) -> str:
    """A real (tiny) LoRA bi-encoder: 1 epoch on 256 rows."""
    from searchtune.params import TrainParams
    from searchtune.steps import finetune

    out = tmp_path_factory.mktemp("model")
    finetune.finetune(tokenized_dir, str(out), TrainParams(max_length=32, epochs=1, max_train_rows=256, batch_size=32))
    return str(out)
