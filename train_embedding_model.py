"""In-batch contrastive training on pairs of different summaries of one abstract (SemCSE).

Each batch holds `batch_size` pairs (a_i, b_i) of two different summaries of paper i, no paper
twice. Every b_j (j != i) is a negative for a_i. The loss is InfoNCE in both directions:

    logits[i, j] = sim(a_i, b_j) / temperature        sim = cosine, or minus Euclidean distance
    loss = ( CE(logits, diag) + CE(logits^T, diag) ) / 2

Euclidean mode uses the plain (not squared) distance ||a - b||_2 of the raw CLS vectors, the
distance the released SemCSE model is evaluated with; the vectors are not normalized, so their
scale is learned along with them.

Other objectives (setting `objective`), on the same data and loss, for comparison:
- simcse_unsup (SimCSE, Gao et al. 2021): a_i = b_i = one summary; the two views differ only by
  dropout, since the batch is embedded in train mode with a fresh mask per row.
- sarcse (SARCSE, Liu et al. 2024): simcse_unsup + reconstruction_weight * a token-reconstruction
  loss from a training-time head (ReconstructionHead below); the saved model has no head.

    python train_embedding_model.py [--resume] [--key=value ...]
"""
from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Iterable, Mapping
from itertools import islice

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

import settings
from settings import SettingsError
from load_data import (append_jsonl, batches_without_duplicates, load_summaries, make_pairs, repair_tail,
                       split_validation)
from model import (autocast, embed, encode, load_model, partner_ranks, pool, recover_interrupted_save,
                   resolve_device, save_model)


class TrainingError(ValueError):
    """Training cannot go on (a non-finite loss); the message says why and where the last checkpoint is."""


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


def training_pairs(counts: Mapping[str, int], objective: str, rng: random.Random) -> list[tuple[str, int, int]]:
    """One epoch's pairs (paper id, i, j) of indices into the paper's summaries (`counts`: how many it
    has): semcse, two different summaries of a paper; simcse_unsup and sarcse, each summary with
    itself (the two views then differ only by their dropout masks)."""
    if objective == "semcse":
        return make_pairs(counts, rng)
    pairs = [(pid, i, i) for pid in sorted(counts) for i in range(counts[pid])]
    rng.shuffle(pairs)
    return pairs


class ReconstructionHead(nn.Module):
    """SARCSE's token-reconstruction autoencoder on the encoder's last-layer token states.

    TextCNN encoder: Conv1d over the tokens with kernel sizes 3, 4 and 5 ("same" padding), each with
    dim // 4 channels, ReLU -> a per-token code of 3 * dim // 4 (a bottleneck below dim). Decoder:
    Linear back to dim. It must rebuild each token's *input* word embedding (detached), so the last
    layer has to keep what identifies the tokens. Loss per token = mean squared error over dim,
    averaged with weights `token_weight[token id]` that fall with corpus frequency (see
    `token_weights`), special tokens and padding weighing 0.
    """

    def __init__(self, dim: int, token_weight: torch.Tensor):
        super().__init__()
        channels = max(1, dim // 4)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding="same") for k in (3, 4, 5))
        self.decoder = nn.Linear(3 * channels, dim)
        self.register_buffer("token_weight", token_weight.float(), persistent=False)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """hidden, target: [batch, tokens, dim]; input_ids, attention_mask: [batch, tokens] -> scalar."""
        x = hidden.transpose(1, 2)                                        # [batch, dim, tokens]
        code = torch.cat([F.relu(conv(x)) for conv in self.convs], dim=1)  # [batch, 3*channels, tokens]
        rebuilt = self.decoder(code.transpose(1, 2))                      # [batch, tokens, dim]
        per_token = ((rebuilt - target) ** 2).mean(-1)                    # [batch, tokens]
        w = self.token_weight[input_ids] * attention_mask
        return (per_token * w).sum() / w.sum().clamp(min=1e-9)


def token_weights(tokenizer, texts: Iterable[str], max_length: int) -> torch.Tensor:
    """[vocab] weights that fall with a token's frequency: smoothed IDF, log((1 + N) / (1 + n_t)) + 1,
    with N texts and n_t of them containing token t (>= 1 for every token; unseen tokens get the
    largest). Special tokens weigh 0: rebuilding [CLS] or [SEP] teaches nothing."""
    n, total, texts = torch.zeros(len(tokenizer), dtype=torch.float64), 0, iter(texts)
    while chunk := list(islice(texts, 1024)):  # streamed: the texts may not fit in memory together
        for ids in tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]:
            n[list(set(ids))] += 1
        total += len(chunk)
    w = torch.log((1 + total) / (1 + n)) + 1
    w[tokenizer.all_special_ids] = 0
    return w.float()


def contrastive_step(model: torch.nn.Module, tokenizer, batch: list[tuple[str, str, str]], cfg: dict,
                     device: torch.device, scaler: torch.amp.GradScaler | None = None,
                     head: ReconstructionHead | None = None) -> torch.Tensor:
    """Forward and backward of one contrastive batch of pairs (paper id, a, b); returns the loss.

    Leaves in each parameter's .grad the gradient of the loss over the *global* batch:
    - Several processes (torchrun): this process embeds only its contiguous shard of the pairs; the
      embeddings of all processes are gathered so that negatives come from the global batch, and the
      gradients, each the part flowing through this process's embeddings, are summed across processes.
    - GradCache (mini_batch_size > 0): the shard is embedded in mini-batches without grad; the loss is
      backpropagated to the cached embeddings only; then each mini-batch is embedded again with grad,
      with the RNG replayed so dropout masks match, and its embedding gradient is pushed through it.
      Memory then grows with mini_batch_size, not with batch_size; the result equals the plain loss.
    - SARCSE (`head` given): adds reconstruction_weight * the head's loss on this process's texts.
    """
    world, rank = _world()
    shard = [list(ix) for ix in np.array_split(np.arange(len(batch)), world)]
    mine = [batch[i] for i in shard[rank]]
    texts = [p[1] for p in mine] + [p[2] for p in mine]  # [a_1..a_m, b_1..b_m]: 2m texts
    size = cfg["mini_batch_size"] or len(texts)
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]

    aux = []  # SARCSE's reconstruction loss of each forward pass

    def forward(chunk: list[str]) -> torch.Tensor:  # [len(chunk), dim] float32
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=cfg["max_length"], return_tensors="pt")
        pin = device.type == "cuda"
        enc = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in enc.items()}
        with autocast(device, cfg["precision"]):
            if head is None:
                return embed(model, enc, cfg["pooling"]).float()
            hidden = model(**enc).last_hidden_state
            target = model.get_input_embeddings()(enc["input_ids"]).detach()
            aux.append(head(hidden.float(), enc["input_ids"], enc["attention_mask"], target.float()))
            return pool(hidden, enc["attention_mask"], cfg["pooling"]).float()

    cached = len(chunks) > 1
    if cached and head is not None:
        raise SettingsError("objective=sarcse does not combine with GradCache: set mini_batch_size=0")
    if cached:
        states = []
        with torch.no_grad():
            embs = []
            for chunk in chunks:
                states.append(_rng_state())
                embs.append(forward(chunk))
        after = _rng_state()
        local = torch.cat(embs).requires_grad_()
    else:
        local = forward(texts)
    a, b = _gather_pairs(local, [len(ix) for ix in shard], rank)
    loss = contrastive_loss(a, b, cfg["metric"], settings.temperature_for(cfg))
    if aux:  # each process adds its share, so the summed gradient is that of the mean over processes
        loss = loss + cfg["reconstruction_weight"] * aux[0] / world
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if cached:
        grads, start = local.grad, 0
        for chunk, state in zip(chunks, states):
            _set_rng_state(state)
            forward(chunk).backward(grads[start:start + len(chunk)])
            start += len(chunk)
        _set_rng_state(after)
    if world > 1:
        for p in [*model.parameters(), *(head.parameters() if head is not None else [])]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
    return loss.detach()


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _world()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather_pairs(local: torch.Tensor, sizes: list[int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """local [2m, dim] = this process's [a; b]; returns global a, b [n, dim] in batch order. Only this
    process's rows carry grad (the others' gradients are computed, and summed in, by their owners)."""
    world = len(sizes)
    if world == 1:
        m = len(local) // 2
        return local[:m], local[m:]
    padded = local.new_zeros(2 * max(sizes), local.shape[1])  # all_gather needs equal shapes
    padded[:len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts[rank] = local
    a = torch.cat([p[:m] for p, m in zip(parts, sizes)])
    b = torch.cat([p[m:2 * m] for p, m in zip(parts, sizes)])
    return a, b


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None and torch.cuda.is_available():  # a GPU checkpoint resumed on a CPU: no CUDA RNG
        torch.cuda.set_rng_state_all(state[1])


def train_embedding_model(resume: bool = False, interrupt_after: int | None = None, **overrides) -> str:
    """Train from settings (plus `overrides`), keep the best checkpoint; returns its folder.

    Folders under output_dir/save_name/: best/ (lowest validation mean rank; a sentence-transformers
    model), last/ (latest validated state + training_state.pt, for `resume`), settings.json, log.jsonl.
    `interrupt_after` stops after that many optimizer steps as an interruption would (for tests).
    """
    cfg = settings.resolved(**overrides)
    run_dir = os.path.join(cfg["output_dir"], cfg["save_name"])
    best_dir, last_dir = os.path.join(run_dir, "best"), os.path.join(run_dir, "last")
    device = resolve_device(cfg["device"])
    world, rank = _init_distributed(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    main_process = rank == 0  # only it writes files and prints; all processes validate (cheap)
    say = print if main_process else (lambda *a, **k: None)
    if main_process:
        os.makedirs(run_dir, exist_ok=True)
        settings.save_settings(run_dir, cfg, temperature_in_use=settings.temperature_for(cfg), processes=world)
        repair_tail(os.path.join(run_dir, "log.jsonl"))  # a run killed mid-record left half a line

    summaries = load_summaries(cfg["train_summaries_file"])  # an index: texts are read batch by batch
    train_ids, val_ids = split_validation(summaries, cfg["validation_size"], cfg["seed"])
    train = summaries.subset(train_ids)
    # Validation: each held-out paper's first summary must find its second among all second ones.
    val_ids = sorted(val_ids)
    val_texts = [summaries[i][:2] for i in val_ids]
    val_queries, val_targets = [t[0] for t in val_texts], [t[1] for t in val_texts]

    recover_interrupted_save(last_dir)
    state_path = os.path.join(last_dir, "training_state.pt")
    state = None
    if resume and os.path.exists(state_path):
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)  # tensors and numbers: no code
        except Exception as e:  # noqa: BLE001 -- a damaged file raises one of several unpickling errors
            raise TrainingError(f"{state_path}: cannot be read ({type(e).__name__}); delete {last_dir} to start "
                                f"afresh, or train on from {best_dir} with --encoder_checkpoint") from None
        if (state["metric"], state.get("objective", "semcse")) != (cfg["metric"], cfg["objective"]):
            raise SettingsError(f"{state_path}: checkpoint was trained with metric={state['metric']}, objective="
                                f"{state.get('objective', 'semcse')}; settings say metric={cfg['metric']}, "
                                f"objective={cfg['objective']}")
    elif resume:
        say(f"note: no checkpoint at {last_dir}; starting from scratch")
    model, tokenizer = load_model(last_dir if state else cfg["encoder_checkpoint"], str(device))
    train_model = torch.compile(model) if cfg["compile"] else model  # same weights; saving uses `model`

    @functools.lru_cache(maxsize=1)  # epoch 0 is asked for twice: to count its steps, then to train
    def epoch_batches(epoch: int) -> list[list[tuple[str, int, int]]]:
        # Order depends only on (seed, epoch), so a resumed run sees the same batches.
        pairs = training_pairs(train.counts, cfg["objective"], random.Random(cfg["seed"] * 100_003 + epoch))
        return [[pairs[i] for i in b] for b in batches_without_duplicates([p[0] for p in pairs], cfg["batch_size"])]

    steps_per_epoch = len(epoch_batches(0))
    total_steps = cfg["max_steps"] if cfg["max_steps"] > 0 else cfg["epochs"] * steps_per_epoch
    head = None
    if cfg["objective"] == "sarcse":
        texts = (s for pid in sorted(train) for s in train[pid])
        head = ReconstructionHead(model.config.hidden_size, token_weights(tokenizer, texts, cfg["max_length"]))
        head.to(device)
        if state:
            head.load_state_dict(state["head"])
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"],
                                  fused=device.type == "cuda")
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg["warmup_steps"], total_steps), total_steps)
    fp16 = device.type == "cuda" and (cfg["precision"] == "fp16" or
                                      (cfg["precision"] == "auto" and not torch.cuda.is_bf16_supported()))
    scaler = torch.amp.GradScaler(enabled=fp16)  # loss scaling wherever autocast runs in fp16

    def validate() -> float:
        q = encode(model, tokenizer, val_queries, cfg["encode_batch_size"], cfg["max_length"], cfg["pooling"], cfg["precision"])
        t = encode(model, tokenizer, val_targets, cfg["encode_batch_size"], cfg["max_length"], cfg["pooling"], cfg["precision"])
        return float(partner_ranks(q, t, metric=cfg["metric"]).mean())

    def log(record: dict) -> None:
        if not main_process:
            return
        with open(os.path.join(run_dir, "log.jsonl"), "a", encoding="utf-8") as f:
            append_jsonl(f, record)

    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, epoch, pos = state["step"], state["epoch"], state["batch_in_epoch"]
        best, bad = state["best"], state["bad_validations"]
        initial = state["initial"]
        say(f"resumed from {last_dir} at step {step} (best validation mean rank {best:.3f})")
    else:
        torch.manual_seed(cfg["seed"] + rank)  # different dropout masks in each process
        step, epoch, pos, bad = 0, 0, 0, 0
        best = initial = validate()
        if main_process:
            save_model(model, tokenizer, best_dir, cfg["metric"], cfg["max_length"], cfg["pooling"])
        log({"step": 0, "val_mean_rank": initial, "of": len(val_ids)})
    say(f"{len(train)} training papers, {steps_per_epoch} batches/epoch, {total_steps} steps; "
          f"validation on {len(val_ids)} held-out papers, mean partner rank before training: {initial:.3f}")

    def checkpoint() -> None:
        if not main_process:
            return
        save_model(model, tokenizer, last_dir, cfg["metric"], cfg["max_length"], cfg["pooling"], training_state={
            "step": step, "epoch": epoch, "batch_in_epoch": pos, "best": best, "bad_validations": bad, "initial": initial, "metric": cfg["metric"],
            "objective": cfg["objective"], "head": head.state_dict() if head is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": _rng_state()})

    model.train()
    if head is not None:
        head.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True, disable=not main_process)
    stopped, started, interrupted = False, time.time(), False
    while step < total_steps and not stopped:
        for pairs in epoch_batches(epoch)[pos:]:
            read = {pid: train[pid] for pid, _, _ in pairs}  # this batch's papers (each once), from the file
            batch = [(pid, read[pid][i], read[pid][j]) for pid, i, j in pairs]
            optimizer.zero_grad(set_to_none=True)
            loss = contrastive_step(train_model, tokenizer, batch, cfg, device, scaler, head)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at step {step + 1}; stopped, the last good "
                                 f"checkpoint is in {last_dir} (try a lower learning_rate or higher temperature)")
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step, pos = step + 1, pos + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{best:.3f}")
            if step % cfg["eval_every"] == 0 or step == total_steps:
                score = validate()
                model.train()
                log({"step": step, "loss": loss.item(), "val_mean_rank": score, "lr": scheduler.get_last_lr()[0],
                     "seconds": round(time.time() - started, 1)})
                if score < best:
                    best, bad = score, 0
                    if main_process:
                        save_model(model, tokenizer, best_dir, cfg["metric"], cfg["max_length"], cfg["pooling"])
                else:
                    bad += 1
                checkpoint()
                if main_process:
                    tqdm.write(f"step {step}: validation mean rank {score:.3f} (best {best:.3f})")
                if cfg["patience"] and bad >= cfg["patience"]:
                    say(f"early stopping: {bad} validations without improvement")
                    stopped = True
            if interrupt_after is not None and step >= interrupt_after:
                stopped = interrupted = True
            if stopped or step >= total_steps:
                break
        else:
            epoch, pos = epoch + 1, 0
    bar.close()
    if world > 1:
        dist.barrier()  # the others wait until the main process has written the checkpoints
    if not interrupted:
        say(f"validation mean rank of the partner summary ({len(val_ids)} held-out papers, 1 = perfect): "
              f"untrained {initial:.3f} -> trained (best) {best:.3f}")
    return best_dir


if __name__ == "__main__":
    settings.cli(train_embedding_model, flags={"resume": False})
