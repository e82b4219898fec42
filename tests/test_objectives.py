"""SimCSE and SARCSE as training objectives: views differ only by dropout; the SARCSE head."""
import random

import pytest
import torch
from transformers import AutoModel

import settings
from semcse.model import embed, load_model
from train_embedding_model import ReconstructionHead, token_weights, training_pairs
from test_train import interrupt_after, log_of, run


def test_simcse_pairs_are_each_summary_with_itself_and_differ_only_by_dropout(tiny_model_dir):
    summaries = {"p1": ["first summary", "second summary"], "p2": ["another one", "and more text here"]}
    index = training_pairs({k: len(v) for k, v in summaries.items()}, "simcse_unsup", random.Random(0))
    assert all(i == j for _, i, j in index)
    pairs = [(pid, summaries[pid][i], summaries[pid][j]) for pid, i, j in index]
    assert sorted(p[1] for p in pairs) == sorted(s for v in summaries.values() for s in v)

    model, tok = load_model(tiny_model_dir, "cpu")
    texts = [p[1] for p in pairs] + [p[2] for p in pairs]
    enc = tok(texts, padding=True, return_tensors="pt")
    n = len(pairs)
    with torch.no_grad():
        model.eval()
        e = embed(model, enc, "cls")
        torch.testing.assert_close(e[:n], e[n:])           # same text, no dropout: the same vector
        model.train()
        e = embed(model, enc, "cls")
        assert (e[:n] - e[n:]).abs().max() > 1e-4          # train mode: two dropout masks, two views


def test_token_weights_fall_with_frequency(tiny_model_dir):
    _, tok = load_model(tiny_model_dir, "cpu")
    w = token_weights(tok, ["the cat", "the dog", "the bird"], 16)
    the, cat, zebra = tok.convert_tokens_to_ids(["the", "cat", "zebra"])
    # N = 3 texts: "the" in 3 -> log(4/4) + 1; "cat" in 1 -> log(4/2) + 1; unseen -> log(4/1) + 1
    assert w[the].item() == pytest.approx(1.0)
    assert w[cat].item() == pytest.approx(1 + torch.log(torch.tensor(2.0)).item())
    assert w[zebra].item() == pytest.approx(1 + torch.log(torch.tensor(4.0)).item())
    assert w[tok.cls_token_id] == 0 and w[tok.sep_token_id] == 0 and w[tok.pad_token_id] == 0


def test_reconstruction_head_shapes_and_weighting():
    torch.manual_seed(0)
    dim = 8
    weight = torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1, 1, 3])  # token 0 = special, token 9 = rare
    head = ReconstructionHead(dim, weight)
    assert [c.kernel_size[0] for c in head.convs] == [3, 4, 5]
    assert all(c.out_channels == dim // 4 for c in head.convs) and head.decoder.out_features == dim
    hidden, target = torch.randn(2, 6, dim, requires_grad=True), torch.randn(2, 6, dim)
    ids = torch.tensor([[0, 3, 9, 4, 0, 0], [0, 5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    loss = head(hidden, ids, mask, target)
    assert loss.shape == () and loss > 0
    loss.backward()
    assert hidden.grad.shape == hidden.shape and head.decoder.weight.grad is not None

    # the loss is the weighted mean of per-token errors: recompute it from the head's own output
    x = hidden.detach().transpose(1, 2)
    code = torch.cat([torch.relu(c(x)) for c in head.convs], 1)
    err = ((head.decoder(code.transpose(1, 2)) - target) ** 2).mean(-1)
    w = weight[ids] * mask
    assert loss.item() == pytest.approx(((err * w).sum() / w.sum()).item(), rel=1e-5)
    # a target changed only at zero-weight positions (specials, padding) leaves the loss unchanged
    t2 = target.clone()
    t2[ids == 0] += 100
    assert head(hidden, ids, mask, t2).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("objective", ["simcse_unsup", "sarcse"])
def test_objectives_train_resume_and_save_a_plain_encoder(tmp_path, tiny_model_dir, summaries_file, objective,
                                                          monkeypatch):
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_after(m, 2)
        run(tmp_path, objective, tiny_model_dir, summaries_file, objective=objective, max_steps=4, eval_every=2)
    best = str(tmp_path / objective / "best")
    run(tmp_path, objective, tiny_model_dir, summaries_file, objective=objective, max_steps=4, eval_every=2,
        resume=True)
    assert [r["step"] for r in log_of(tmp_path, objective)] == [0, 2, 4]
    state = torch.load(tmp_path / objective / "last" / "training_state.pt", weights_only=True)
    assert state["objective"] == objective and (state["head"] is not None) == (objective == "sarcse")
    plain = set(AutoModel.from_pretrained(tiny_model_dir).state_dict())
    assert set(AutoModel.from_pretrained(best).state_dict()) == plain  # no head in the saved model
    with pytest.raises(settings.SettingsError, match="objective=semcse"):
        run(tmp_path, objective, tiny_model_dir, summaries_file, max_steps=6, eval_every=2, resume=True)


def test_sarcse_refuses_grad_cache(tmp_path, tiny_model_dir, summaries_file):
    with pytest.raises(settings.SettingsError, match="mini_batch_size=0"):
        run(tmp_path, "gc", tiny_model_dir, summaries_file, objective="sarcse", mini_batch_size=4, max_steps=2)
