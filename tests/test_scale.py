"""GradCache equals the plain loss, and two gloo processes equal one process on the same global batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import settings
from semcse.model import embed, load_model
from semcse.model_setup import training_setup
from train_embedding_model import contrastive_loss, contrastive_step

BATCH = [(f"p{i}", f"summary a of paper {i} about topic {'xyz'[i % 3]}", f"another text b {i} " * (1 + i % 4))
         for i in range(7)]


def cfg(**kw):
    return settings.resolved(precision="fp32", max_length=32, device="cpu", **kw)


def on_cpu(c, model):
    """The run's model settings, as training builds them once (model_setup.training_setup)."""
    return training_setup(c, model, torch.device("cpu"))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_grad_cache_equals_the_plain_loss_without_dropout(tiny_model_dir, metric):
    model, tok = load_model(tiny_model_dir, "cpu")
    model.double().eval()  # float64: equal up to rounding, not float32 summation order; no dropout: the full batch in one pass is the exact reference
    c = cfg(metric=metric, mini_batch_size=0)
    plain = contrastive_step(model, tok, BATCH, c, on_cpu(c, model))
    ref = grads(model)
    model.zero_grad(set_to_none=True)
    c = cfg(metric=metric, mini_batch_size=3)
    cached = contrastive_step(model, tok, BATCH, c, on_cpu(c, model))
    got = grads(model)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    assert ref.keys() == got.keys() and len(ref) > 10
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-9)


def test_grad_cache_replays_dropout_masks(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, "cpu")
    model.double().train()  # dropout on: each mini-batch must see the same masks in both passes
    c = cfg(mini_batch_size=4)
    torch.manual_seed(3)
    loss = contrastive_step(model, tok, BATCH, c, on_cpu(c, model))
    got = grads(model)
    after = torch.get_rng_state()

    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    texts = [p[1] for p in BATCH] + [p[2] for p in BATCH]
    parts = []
    for i in range(0, len(texts), 4):
        enc = tok(texts[i:i + 4], padding=True, truncation=True, max_length=32, return_tensors="pt")
        parts.append(embed(model, enc, "cls").float())  # as contrastive_step does
    emb = torch.cat(parts)
    ref_loss = contrastive_loss(emb[:7], emb[7:], "euclidean", settings.temperature_for(c))
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for k, g in grads(model).items():
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-9)
    assert torch.equal(after, torch.get_rng_state())  # the RNG ends where the plain pass leaves it


def _worker(rank, world, port, model_dir, out_dir, mini):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model, tok = load_model(model_dir, "cpu")
    model.double().eval()
    c = cfg(mini_batch_size=mini)
    loss = contrastive_step(model, tok, BATCH, c, on_cpu(c, model))
    torch.save({"loss": loss, "grads": grads(model)}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("mini", [0, 3])
def test_two_gloo_processes_equal_one_process(tmp_path, tiny_model_dir, mini):
    model, tok = load_model(tiny_model_dir, "cpu")
    model.double().eval()
    c = cfg(mini_batch_size=0)
    one = contrastive_step(model, tok, BATCH, c, on_cpu(c, model))
    ref = grads(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, tiny_model_dir, str(tmp_path), mini), nprocs=2, join=True)
    for rank in range(2):  # 7 pairs: shards of 4 and 3; every process ends with the same gradient
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert r["loss"].item() == pytest.approx(one.item(), rel=1e-5)
        for k in ref:
            torch.testing.assert_close(r["grads"][k], ref[k], rtol=1e-5, atol=1e-9)
