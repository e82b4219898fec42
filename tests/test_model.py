"""Saved models reload through AutoModel and SentenceTransformer with the same embeddings as encode()."""
import numpy as np
import pytest
import torch
from transformers import AutoModel

import model as M

TEXTS = ["Graph neural networks for parsing.", "A short one.",
         "We study speech recognition with a much longer sentence that has many more tokens in it."] * 3


@pytest.mark.parametrize("metric, pooling", [("euclidean", "cls"), ("cosine", "mean")])
def test_saved_model_reloads_with_equal_embeddings(tmp_path, tiny_model_dir, metric, pooling):
    from sentence_transformers import SentenceTransformer

    model, tok = M.load_model(tiny_model_dir, "cpu")
    ours = M.encode(model, tok, TEXTS, batch_size=4, max_length=32, pooling=pooling, precision="fp32")
    path = M.save_model(model, tok, str(tmp_path / "saved"), metric=metric, max_length=32, pooling=pooling)

    st = SentenceTransformer(path, device="cpu")
    assert st.similarity_fn_name == metric
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=4), ours, atol=1e-5)

    hf = AutoModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        direct = M.pool(hf(**enc).last_hidden_state, enc["attention_mask"], pooling).numpy()
    np.testing.assert_allclose(direct, ours, atol=1e-5)

    reloaded, tok2 = M.load_model(path, "cpu")
    np.testing.assert_allclose(M.encode(reloaded, tok2, TEXTS, 4, 32, pooling, "fp32"), ours, atol=1e-6)


def test_encode_keeps_input_order_and_bf16_is_close(tiny_model_dir):
    model, tok = M.load_model(tiny_model_dir, "cpu")
    full = M.encode(model, tok, TEXTS, batch_size=2, max_length=32, precision="fp32")
    one_by_one = np.stack([M.encode(model, tok, [t], 1, 32, precision="fp32")[0] for t in TEXTS])
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)  # sorting and padding change nothing
    half = M.encode(model, tok, TEXTS, batch_size=2, max_length=32, precision="bf16")
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99
    assert M.encode(model, tok, [], 2, 32).shape == (0, 32)


def test_partner_ranks():
    e = np.eye(4)
    assert M.partner_ranks(e, e, metric="euclidean").tolist() == [1, 1, 1, 1]
    # query 0 vs reversed candidates: one candidate closer, two tied with the true one -> 1 + 1 + 2/2
    assert M.partner_ranks(e, e[::-1], metric="cosine").tolist() == [3, 3, 3, 3]
    q = np.array([[0.0], [1.0], [2.0]])
    c = np.array([[2.0], [1.0], [0.0]])
    assert M.partner_ranks(q, c, metric="euclidean", block=1).tolist() == [3, 1, 3]
    assert M.partner_ranks(np.ones((5, 2)), np.ones((5, 2)), metric="euclidean").tolist() == [3.0] * 5


def test_missing_models_fail_clearly(tmp_path):
    with pytest.raises(M.ModelError, match="no weights"):
        M.load_model(str(tmp_path), "cpu")
    with pytest.raises(M.ModelError, match="never downloads"):
        M.load_model("nobody/no-such-model-xyz", "cpu")


def test_bad_model_folders_name_the_folder_and_the_fault(tmp_path, tiny_model_dir):
    """Damaged, mismatched or wrong-architecture folders give our ModelError, never random weights."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, T5Config, T5Model

    def copy(name: str) -> str:
        return shutil.copytree(tiny_model_dir, tmp_path / name)

    def edit_config(path: str, **changes) -> None:
        cfg = json.load(open(os.path.join(path, "config.json")))
        json.dump({**cfg, **changes}, open(os.path.join(path, "config.json"), "w"))

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    damaged = copy("damaged")
    weights = os.path.join(damaged, "model.safetensors")
    open(weights, "r+b").truncate(os.path.getsize(weights) // 2)  # a copy cut short
    resized = copy("resized")
    edit_config(resized, hidden_size=64)
    wrong = copy("wrong_arch")  # GPT-2 weights under a BERT config.json
    GPT2Model(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=1, n_head=2)).save_pretrained(wrong)
    edit_config(wrong, **json.load(open(os.path.join(tiny_model_dir, "config.json"))))
    t5 = str(tmp_path / "t5")
    T5Model(T5Config(vocab_size=tok.vocab_size, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)).save_pretrained(t5)
    tok.save_pretrained(t5)
    unknown = copy("unknown")
    edit_config(unknown, model_type="no-such-architecture")
    cases = {damaged: "SafetensorError", resized: "tensor shapes differ", wrong: "tensors missing, e.g. ",
             t5: "encoder-decoder model (t5)", unknown: "no-such-architecture"}
    for path, words in cases.items():
        with pytest.raises(M.ModelError) as e:
            M.load_model(str(path), "cpu")
        assert str(e.value).startswith(str(path)) and words in str(e.value) and "\n" not in str(e.value)

    # safetensors where present: a broken pickle beside them is never opened
    both = copy("both")
    open(os.path.join(both, "pytorch_model.bin"), "wb").write(b"not a pickle")
    model, _ = M.load_model(str(both), "cpu")
    assert model.config.hidden_size == 32

    # through a script: one line naming the folder, exit code 2
    res = subprocess.run([sys.executable, os.path.join(ROOT, "semantic_benchmark.py"), f"--model={wrong}",
                          f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {wrong}: its weights do not fit its config.json")
