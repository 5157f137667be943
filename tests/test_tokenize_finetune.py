"""Tokenize and fine-tune steps on real data with the bundled model."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from searchtune import records
from searchtune.ml import batching, modeling, scoring, tokens
from searchtune.params import TrainParams
from searchtune.steps import finetune


def test_tokenized_splits_are_unpadded_and_truncated(splits_dir, tokenized_dir):
    stats = json.loads(Path(tokenized_dir, "tokenize_stats.json").read_text())
    shards = sorted(Path(tokenized_dir, "train").glob("part-*.arrow"))
    table = pa.concat_tables(pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in shards)
    assert table.column_names == ["label", "target", "query_key", "query_ids", "text_ids"]
    assert table.schema.field("text_ids").type == pa.list_(pa.int32())
    lengths = [len(ids) for ids in table.column("text_ids").to_pylist()]
    assert max(lengths) <= 32 and min(lengths) < max(lengths)  # no pad-to-max
    assert stats["splits"]["train"]["rows"] == table.num_rows
    assert 0 <= stats["splits"]["train"]["text"]["truncated_rate"] <= 1
    assert Path(tokenized_dir, "tokenizer", "tokenizer.json").exists()


def test_cross_encoder_pairs_keep_the_query_and_the_final_sep():
    tokenizer = modeling.load_tokenizer(modeling.resolve_base_model(""))
    columns, lengths = tokens.encode_pairs(tokenizer, "cross-encoder", ["cordless drill"], ["word " * 100], max_length=16)
    ids = columns["pair_ids"][0]
    assert len(ids) == 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[1 : ids.index(tokenizer.sep_token_id)]) == "cordless drill"
    assert lengths["pair"][0] > 16


def test_length_grouped_batches_cover_every_row_once_and_reduce_padding():
    lengths = np.random.default_rng(0).integers(3, 60, size=1000)
    batches = batching.length_grouped_batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(np.random.default_rng(1).permutation(1000), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.8 * padded_random
    # Same seed, same order: what resuming from a checkpoint relies on.
    again = batching.length_grouped_batches(lengths, 32, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))


def test_trained_model_saves_adapter_and_reloads_with_same_scores(trained_model_dir, splits_dir):
    from searchtune.steps import splits

    files = {p.name for p in Path(trained_model_dir).iterdir()}
    assert {"adapter", "tokenizer", "searchtune_model.json", "head.safetensors"} <= files
    assert Path(trained_model_dir, "adapter", "adapter_model.safetensors").exists()
    record = records.ModelRecord.read(trained_model_dir)
    assert record.architecture == "bi-encoder" and record.base_model.bundled
    assert len(record.base_model.sha256) == 64
    assert record.epochs[0].validation_auc > 0.5
    assert record.training == TrainParams(max_length=32, epochs=1, max_train_rows=256, batch_size=32).model_dump()
    test = splits.read_split(splits_dir, "test")
    model, tokenizer, _ = modeling.load_trained_model(trained_model_dir)
    first = scoring.score_frame(model, tokenizer, "bi-encoder", 32, test)
    model2, tokenizer2, _ = modeling.load_trained_model(trained_model_dir)
    np.testing.assert_allclose(first, scoring.score_frame(model2, tokenizer2, "bi-encoder", 32, test), rtol=1e-5, atol=1e-5)


def test_architecture_mismatch_is_a_clear_error(tokenized_dir, tmp_path):
    from searchtune.errors import SearchtuneError

    with pytest.raises(SearchtuneError, match="tokenized for bi-encoder, training asks for cross-encoder"):
        finetune.finetune(tokenized_dir, str(tmp_path), TrainParams(architecture="cross-encoder"))


@pytest.mark.slow
def test_preempted_training_resumes_from_its_checkpoint(tokenized_dir, tmp_path):
    """Kill training (SIGKILL) after its first checkpoint; the rerun resumes instead of starting over."""
    checkpoint = tmp_path / "ckpt"
    script = textwrap.dedent(f"""
        from searchtune import logs
        from searchtune.params import TrainParams
        from searchtune.steps import finetune
        logs.setup()
        config = TrainParams(epochs=2, max_train_rows=192, batch_size=16, checkpoint_every_steps=4)
        finetune.finetune({tokenized_dir!r}, {str(tmp_path / "model")!r}, config, checkpoint_uri={str(checkpoint)!r})
    """)
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (checkpoint / "checkpoint.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert (checkpoint / "checkpoint.pt").exists(), "no checkpoint was written before the deadline"
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from checkpoint" in second.stderr
    history = records.ModelRecord.read(str(tmp_path / "model")).epochs
    assert [epoch.epoch for epoch in history] == [1, 2]
