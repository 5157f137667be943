"""The inference encoder (LoRA merged) scores pairs exactly as the evaluation step does."""

import shutil

import numpy as np
import pytest
import torch

from searchtune.errors import SearchtuneError
from searchtune.ml import embedding, modeling, scoring
from searchtune.steps import splits


@pytest.fixture(scope="module")
def encoder(trained_model_dir):
    return embedding.TextEncoder(trained_model_dir, threads=1)


def test_pair_logits_equal_the_evaluation_steps(encoder, trained_model_dir, splits_dir):
    test = splits.read_split(splits_dir, "test")
    model, tokenizer, record = modeling.load_trained_model(trained_model_dir)
    expected = scoring.score_frame(model, tokenizer, record.architecture, record.max_length, test)
    got = encoder.score_pairs(test["query"].tolist(), test["product_text"].tolist())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    # Texts longer than max_length are cut the same way as in tokenize/evaluate.
    long = test.head(5).assign(product_text=lambda f: (f["product_text"] + " ") * 6, query=lambda f: (f["query"] + " ") * 8)
    assert long["product_text"].map(lambda t: len(tokenizer(t)["input_ids"])).min() > record.max_length
    expected = scoring.score_frame(model, tokenizer, record.architecture, record.max_length, long)
    assert np.abs(encoder.score_pairs(long["query"].tolist(), long["product_text"].tolist()) - expected).max() <= 1e-4


def test_the_lora_update_is_merged_and_threads_are_set(encoder):
    names = [name for name, _ in encoder.model.named_parameters()]
    assert names and not any("lora" in name for name in names)
    assert type(encoder.model.encoder).__module__.startswith("transformers.")
    assert torch.get_num_threads() == 1
    assert not torch.is_grad_enabled() or not any(p.requires_grad and p.grad is not None for p in encoder.model.parameters())


def test_embeddings_are_unit_vectors_in_input_order_whatever_the_batch(encoder, splits_dir):
    texts = splits.read_split(splits_dir, "validation")["product_text"].drop_duplicates().head(40).tolist()
    batched = encoder.embed(texts)
    assert batched.shape == (len(texts), encoder.dimension) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encoder.embed([text])[0] for text in texts[:8]])
    assert np.abs(one_by_one - batched[:8]).max() < 1e-5
    assert encoder.embed([]).shape == (0, encoder.dimension)
    logits = encoder.logits_from_cosine(batched[:3] @ batched[0])
    assert logits[0] == pytest.approx(encoder.scale + encoder.bias, abs=1e-5)


def test_the_fingerprint_names_the_models_files(trained_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(trained_model_dir, copy)
    assert embedding.model_fingerprint(str(copy)) == embedding.model_fingerprint(trained_model_dir)
    head = copy / "head.safetensors"
    head.write_bytes(head.read_bytes()[:-1] + b"\x00")
    assert embedding.model_fingerprint(str(copy)) != embedding.model_fingerprint(trained_model_dir)


def test_a_negative_thread_count_or_an_unknown_engine_is_refused(trained_model_dir):
    with pytest.raises(SearchtuneError, match="thread count"):
        embedding.set_threads(-1)
    with pytest.raises(SearchtuneError, match="unknown engine 'tensorrt'; choose one of auto, torch, onnx"):
        embedding.TextEncoder(trained_model_dir, engine="tensorrt")


def test_the_onnx_runtime_engine_gives_the_torch_vectors(encoder, trained_model_dir, splits_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert encoder.engine == "onnx", "auto picks ONNX Runtime when it is installed"
    by_torch = embedding.TextEncoder(trained_model_dir, threads=1, engine="torch")
    assert by_torch.engine == "torch"
    texts = splits.read_split(splits_dir, "train")["product_text"].drop_duplicates().head(150).tolist() + ["a", "b c"]
    assert np.abs(encoder.embed(texts) - by_torch.embed(texts)).max() <= embedding.ONNX_TOLERANCE
