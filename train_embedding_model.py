"""In-batch contrastive training on pairs of different summaries of one abstract (SemCSE).

Each batch holds `batch_size` pairs (a_i, b_i) of two different summaries of paper i, no paper
twice. Every b_j (j != i) is a negative for a_i. The loss is InfoNCE in both directions:

    logits[i, j] = sim(a_i, b_j) / temperature        sim = cosine, or minus Euclidean distance
    loss = ( CE(logits, diag) + CE(logits^T, diag) ) / 2

Euclidean mode uses the plain (not squared) distance ||a - b||_2 of the raw CLS vectors, the
distance the released SemCSE model is evaluated with; the vectors are not normalized, so their
scale is learned along with them.

    python train_embedding_model.py [--resume] [--key=value ...]
"""
from __future__ import annotations

import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

import settings
from load_data import batches_without_duplicates, load_summaries, make_pairs, split_validation
from model import autocast, embed, encode, load_model, partner_ranks, resolve_device, save_model


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. a, b: [batch, dim], row i of a and b are a positive pair."""
    if metric == "cosine":
        sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    elif metric == "euclidean":
        sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
        sim = -torch.sqrt(sq.clamp(min=1e-12))  # clamp: the sqrt's gradient is infinite at 0
    else:
        raise ValueError(f"setting 'metric' must be euclidean or cosine, got '{metric}'")
    logits = sim / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_embedding_model(resume: bool = False, interrupt_after: int | None = None, **overrides) -> str:
    """Train from settings (plus `overrides`), keep the best checkpoint; returns its folder.

    Folders under output_dir/save_name/: best/ (lowest validation mean rank; a sentence-transformers
    model), last/ (latest validated state + training_state.pt, for `resume`), settings.json, log.jsonl.
    `interrupt_after` stops after that many optimizer steps as an interruption would (for tests).
    """
    cfg = settings.resolved(**overrides)
    run_dir = os.path.join(cfg["output_dir"], cfg["save_name"])
    best_dir, last_dir = os.path.join(run_dir, "best"), os.path.join(run_dir, "last")
    os.makedirs(run_dir, exist_ok=True)
    settings.save_settings(run_dir, cfg, temperature_in_use=settings.temperature_for(cfg))
    device = resolve_device(cfg["device"])

    summaries = load_summaries(cfg["train_summaries_file"])
    train, val = split_validation(summaries, cfg["validation_size"], cfg["seed"])
    # Validation: each held-out paper's first summary must find its second among all second ones.
    val_ids = sorted(val)
    val_queries, val_targets = [val[i][0] for i in val_ids], [val[i][1] for i in val_ids]

    state_path = os.path.join(last_dir, "training_state.pt")
    state = None
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["metric"] != cfg["metric"]:
            raise SystemExit(f"error: {state_path}: checkpoint was trained with metric={state['metric']}, "
                             f"settings say metric={cfg['metric']}")
    elif resume:
        print(f"note: no checkpoint at {last_dir}; starting from scratch")
    model, tokenizer = load_model(last_dir if state else cfg["encoder_checkpoint"], cfg["device"])

    def epoch_batches(epoch: int) -> list[list[tuple[str, str, str]]]:
        # Order depends only on (seed, epoch), so a resumed run sees the same batches.
        pairs = make_pairs(train, random.Random(cfg["seed"] * 100_003 + epoch))
        return [[pairs[i] for i in b] for b in batches_without_duplicates([p[0] for p in pairs], cfg["batch_size"])]

    steps_per_epoch = len(epoch_batches(0))
    total_steps = cfg["max_steps"] if cfg["max_steps"] > 0 else cfg["epochs"] * steps_per_epoch
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"],
                                  weight_decay=cfg["weight_decay"], fused=fused)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg["warmup_steps"], total_steps), total_steps)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and cfg["precision"] == "fp16")

    def validate() -> float:
        q = encode(model, tokenizer, val_queries, cfg["encode_batch_size"], cfg["max_length"], cfg["pooling"], cfg["precision"])
        t = encode(model, tokenizer, val_targets, cfg["encode_batch_size"], cfg["max_length"], cfg["pooling"], cfg["precision"])
        return float(partner_ranks(q, t, metric=cfg["metric"]).mean())

    def log(record: dict) -> None:
        with open(os.path.join(run_dir, "log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, epoch, pos = state["step"], state["epoch"], state["batch_in_epoch"]
        best, bad = state["best"], state["bad_validations"]
        initial = state["initial"]
        print(f"resumed from {last_dir} at step {step} (best validation mean rank {best:.3f})")
    else:
        torch.manual_seed(cfg["seed"])
        step, epoch, pos, bad = 0, 0, 0, 0
        best = initial = validate()
        save_model(model, tokenizer, best_dir, cfg["metric"], cfg["max_length"], cfg["pooling"])
        log({"step": 0, "val_mean_rank": initial, "of": len(val_ids)})
    print(f"{len(train)} training papers, {steps_per_epoch} batches/epoch, {total_steps} steps; "
          f"validation on {len(val_ids)} held-out papers, mean partner rank before training: {initial:.3f}")

    def checkpoint() -> None:
        save_model(model, tokenizer, last_dir, cfg["metric"], cfg["max_length"], cfg["pooling"], training_state={
            "step": step, "epoch": epoch, "batch_in_epoch": pos, "best": best, "bad_validations": bad, "initial": initial, "metric": cfg["metric"],
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None})

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True)
    stopped, started, interrupted = False, time.time(), False
    while step < total_steps and not stopped:
        for batch in epoch_batches(epoch)[pos:]:
            texts = [p[1] for p in batch] + [p[2] for p in batch]  # [a_1..a_n, b_1..b_n]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=cfg["max_length"], return_tensors="pt")
            enc = {k: v.to(device, non_blocking=True) for k, v in enc.items()}
            with autocast(device, cfg["precision"]):
                emb = embed(model, enc, cfg["pooling"]).float()  # [2n, dim]
            loss = contrastive_loss(emb[:len(batch)], emb[len(batch):], cfg["metric"], settings.temperature_for(cfg))
            if not torch.isfinite(loss):
                raise SystemExit(f"error: loss is {loss.item()} at step {step + 1}; stopped, the last good "
                                 f"checkpoint is in {last_dir} (try a lower learning_rate or higher temperature)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step, pos = step + 1, pos + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{best:.3f}")
            if step % cfg["eval_every"] == 0 or step == total_steps:
                rank = validate()
                model.train()
                log({"step": step, "loss": loss.item(), "val_mean_rank": rank, "lr": scheduler.get_last_lr()[0],
                     "seconds": round(time.time() - started, 1)})
                if rank < best:
                    best, bad = rank, 0
                    save_model(model, tokenizer, best_dir, cfg["metric"], cfg["max_length"], cfg["pooling"])
                else:
                    bad += 1
                checkpoint()
                tqdm.write(f"step {step}: validation mean rank {rank:.3f} (best {best:.3f})")
                if cfg["patience"] and bad >= cfg["patience"]:
                    tqdm.write(f"early stopping: {bad} validations without improvement")
                    stopped = True
            if interrupt_after is not None and step >= interrupt_after:
                stopped = interrupted = True
            if stopped or step >= total_steps:
                break
        else:
            epoch, pos = epoch + 1, 0
    bar.close()
    if not interrupted:
        print(f"validation mean rank of the partner summary ({len(val_ids)} held-out papers, 1 = perfect): "
              f"untrained {initial:.3f} -> trained (best) {best:.3f}")
    return best_dir


if __name__ == "__main__":
    flags = settings.parse_command_line(flags={"resume": False})
    train_embedding_model(resume=flags["resume"])
