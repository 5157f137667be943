"""searchtune.io.storage against real local files and a real GCS emulator server."""

import io
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from searchtune.errors import SearchtuneError
from searchtune.io import storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_bucket") + "/root"


def test_join_and_is_gcs():
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/tmp/x")
    assert storage.join("gs://b/p/", "a", "/c.txt") == "gs://b/p/a/c.txt"
    assert storage.join("/tmp/p", "a", "c.txt") == "/tmp/p/a/c.txt"


def test_write_read_exists_and_atomic_local_write(root, tmp_path):
    uri = storage.join(root, "d", "f.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"first")
    storage.write_bytes(uri, b"second")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"second"
    if not storage.is_gcs(root):  # no temporary files left next to the target
        assert os.listdir(os.path.dirname(uri)) == ["f.bin"]


def test_expand_file_folder_glob_and_nothing(root):
    for name in ("a/1.csv", "a/2.csv", "a/sub/3.csv", "a/sub/4.json", "b/5.csv"):
        storage.write_bytes(storage.join(root, name), name.encode())
    rel = lambda uris: [storage.relative(u, root) for u in uris]  # noqa: E731
    assert rel(storage.expand(storage.join(root, "a/1.csv"))) == ["a/1.csv"]
    assert rel(storage.expand(storage.join(root, "a"))) == ["a/1.csv", "a/2.csv", "a/sub/3.csv", "a/sub/4.json"]
    assert rel(storage.expand(storage.join(root, "a/*.csv"))) == ["a/1.csv", "a/2.csv"]
    assert rel(storage.expand(storage.join(root, "**/*.csv"))) == ["a/1.csv", "a/2.csv", "a/sub/3.csv", "b/5.csv"]
    with pytest.raises(SearchtuneError, match="no files found") as error:
        storage.expand(storage.join(root, "missing/*.parquet"))
    assert "missing/*.parquet" in str(error.value)


def test_create_if_absent(root):
    uri = storage.join(root, "claim")
    storage.create_bytes(uri, b"mine")
    storage.create_bytes(uri, b"mine")  # a retried request finding its own bytes: fine
    with pytest.raises(storage.PreconditionFailed):
        storage.create_bytes(uri, b"theirs")
    assert storage.read_bytes(uri) == b"mine"


def test_compare_and_swap(root):
    uri = storage.join(root, "alias.json")
    assert storage.read_with_generation(uri) == (None, None)
    storage.write_if_generation_matches(uri, b"v1", None)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_if_generation_matches(uri, b"again", None)  # must not exist: it does
    data, generation = storage.read_with_generation(uri)
    assert data == b"v1"
    storage.write_if_generation_matches(uri, b"v2", generation)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_if_generation_matches(uri, b"v3", generation)  # stale generation
    assert storage.read_bytes(uri) == b"v2"


def test_stat_list_sizes_and_streamed_reads(root, tmp_path):
    uri = storage.join(root, "d", "f.bin")
    storage.write_bytes(uri, b"12345")
    size, version = storage.stat(uri)
    assert size == 5 and isinstance(version, str)
    storage.write_bytes(uri, b"1234567")
    assert storage.stat(uri)[0] == 7 and storage.stat(uri)[1] != version  # the version follows the content
    storage.write_bytes(storage.join(root, "d", "sub", "g.txt"), b"g")
    assert {storage.relative(u, root): n for u, n in storage.list_sizes(storage.join(root, "d")).items()} == {
        "d/f.bin": 7, "d/sub/g.txt": 1}
    assert storage.list_sizes(storage.join(root, "nothing-here")) == {}
    sink = io.BytesIO()
    storage.read_into(uri, sink)
    assert sink.getvalue() == b"1234567"
    with pytest.raises(storage.Missing, match="no such"):
        storage.stat(storage.join(root, "d", "missing.bin"))
    with pytest.raises(storage.Missing):
        storage.read_into(storage.join(root, "d", "missing.bin"), io.BytesIO())


def test_create_file_counts_its_own_earlier_copy_as_created(root, tmp_path):
    source, other = tmp_path / "source.bin", tmp_path / "other.bin"
    source.write_bytes(b"weights")
    other.write_bytes(b"different")
    uri = storage.join(root, "v", "weights.bin")
    storage.create_file(str(source), uri)
    storage.create_file(str(source), uri)  # a retried request finding its own bytes: fine
    with pytest.raises(storage.PreconditionFailed, match="already exists"):
        storage.create_file(str(other), uri)
    assert storage.read_bytes(uri) == b"weights"


def test_local_errors_are_one_line_and_name_the_culprit(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SearchtuneError) as error:
        storage.write_bytes(str(tmp_path / "file" / "below" / "f.json"), b"{}")
    assert str(error.value) in (f"{tmp_path / 'file'}: exists and is not a folder",
                                f"{tmp_path / 'file' / 'below'}: a folder on this path is a file")
    with pytest.raises(SearchtuneError, match="is a directory, expected a file"):
        storage.read_bytes(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no temporary files left behind


def test_large_file_resumable_upload_and_verified_download(gcs_bucket, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(storage.RESUMABLE_THRESHOLD + 3 * 1024 * 1024))  # two chunks
    uri = f"{gcs_bucket}/models/big.bin"
    storage.create_file(str(big), uri)
    with pytest.raises(storage.PreconditionFailed):  # resumable uploads honour the precondition too
        other = tmp_path / "other.bin"
        other.write_bytes(os.urandom(storage.RESUMABLE_THRESHOLD + 1))
        storage.create_file(str(other), uri)
    out = tmp_path / "out" / "big.bin"
    storage.download(uri, str(out))
    assert out.read_bytes() == big.read_bytes()


def test_copy_tree_and_local_copy_both_directions(gcs_bucket, tmp_path):
    src = tmp_path / "src"
    for name in ("adapter/w.bin", "tokenizer/vocab.txt", "config.json"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    storage.copy_tree(str(src), f"{gcs_bucket}/copy")
    storage.copy_tree(f"{gcs_bucket}/copy", f"{gcs_bucket}/copy2")
    back = tmp_path / "back"
    storage.copy_tree(f"{gcs_bucket}/copy2", str(back))
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()) == [
        "adapter/w.bin", "config.json", "tokenizer/vocab.txt"]
    with storage.local_copy(f"{gcs_bucket}/copy") as local:
        assert open(os.path.join(local, "tokenizer", "vocab.txt")).read() == "tokenizer/vocab.txt"
    with storage.local_copy(f"{gcs_bucket}/copy/config.json") as local:
        assert open(local).read() == "config.json"
    assert not os.path.exists(local)  # the temporary copy is gone
    with storage.local_copy(str(src)) as local:
        assert local == str(src)


def test_permission_denied_is_a_one_line_error_naming_the_object(gcs_emulator, tmp_path):
    # The test server answers `denied-*` buckets with GCS's 403 (see tests/gcs_emulator.py).
    for action in (lambda: storage.read_bytes("gs://denied-logs/2026/11/day.parquet"),
                   lambda: storage.write_bytes("gs://denied-logs/2026/11/day.parquet", b"x"),
                   lambda: storage.expand("gs://denied-logs/2026/11/*.parquet")):
        with pytest.raises(SearchtuneError) as error:
            action()
        message = str(error.value)
        assert "denied-logs" in message and "permission denied (403)" in message and "\n" not in message
    result = subprocess.run([sys.executable, "-m", "searchtune.cli", "run", "--data", "gs://denied-logs/2026/11/day.parquet",
                             "--registry", str(tmp_path / "registry"), "--output-dir", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    # The first step that reads the data reports it: preflight (which snapshots the inputs) or ingest.
    assert re.match(r"searchtune: error: step (preflight|ingest) failed: gs://denied-logs/2026/11/day.parquet: "
                    r"permission denied \(403\)", last), last
    assert not (tmp_path / "registry").exists()


def test_missing_bucket_and_object_are_one_line_errors(gcs_bucket, tmp_path):
    with pytest.raises(SearchtuneError) as error:
        storage.read_bytes("gs://no-such-bucket-st/x/y.json")
    assert str(error.value) == "gs://no-such-bucket-st/x/y.json: bucket 'no-such-bucket-st' does not exist"
    with pytest.raises(SearchtuneError) as error:
        storage.write_bytes("gs://no-such-bucket-st/x/y.json", b"{}")
    assert "bucket 'no-such-bucket-st' does not exist" in str(error.value)
    with pytest.raises(SearchtuneError) as error:
        storage.download(f"{gcs_bucket}/nope.json", str(tmp_path / "nope.json"))
    assert str(error.value) == f"{gcs_bucket}/nope.json: no such object (404)"
    assert not (tmp_path / "nope.json").exists() and os.listdir(tmp_path) == []
    with pytest.raises(SearchtuneError, match="no such file"):
        storage.read_bytes(str(tmp_path / "missing.txt"))


def test_emulator_enforces_generation_preconditions(gcs_emulator, gcs_bucket):
    """The test double's added precondition support answers 412 the way GCS documents it."""
    bucket = gcs_bucket[len("gs://"):]
    url = f"{gcs_emulator.endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name=obj&ifGenerationMatch=0"
    request = lambda: urllib.request.Request(url, data=b"x", method="POST")  # noqa: E731
    urllib.request.urlopen(request()).close()
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request())
    assert error.value.code == 412
