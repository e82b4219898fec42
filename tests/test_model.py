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
