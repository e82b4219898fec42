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
  loss from a training-time head (sarcse.ReconstructionHead); the saved model has no head.

Reading order: train_embedding_model (the run), the loop and its checkpoints, then one contrastive
step (process sharding, GradCache), the loss and the pairs.

    python train_embedding_model.py [--resume | --overwrite] [--key=value ...]
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

import settings
from settings import SettingsError
from load_data import (Summaries, append_jsonl, batches_without_duplicates, load_summaries, make_pairs, repair_tail,
                       split_validation)
from distributed import gather_pairs, join_processes, shard, sum_gradients, world_and_rank
from model import (autocast, embed, encode, load_model, partner_ranks, recover_interrupted_save, resolve_device,
                   resolve_model_settings, save_model, similarity, transformer_of)
from run_folder import TrainingError, check_same_run, clear_outputs, locked, run_identity, start_afresh
from sarcse import ReconstructionHead, token_weights


def train_embedding_model(resume: bool = False, overwrite: bool = False, **overrides: Any) -> str:
    """Train from settings (plus `overrides`), keep the best checkpoint; returns its folder.

    Folders under output_dir/save_name/: best/ (lowest validation mean rank; a sentence-transformers
    model), last/ (latest validated state + training_state.pt, for `resume`), settings.json, log.jsonl.
    A folder that holds a run is continued (`resume`, same settings and data only) or replaced
    (`overwrite`), never mixed with another run; one training at a time uses it (run_folder.locked).
    """
    cfg = settings.resolved(**overrides)
    cfg = resolve_model_settings(cfg, cfg["encoder_checkpoint"])  # pooling, metric "auto": the encoder's own
    if cfg["objective"] == "sarcse" and cfg["mini_batch_size"]:
        raise SettingsError("objective=sarcse does not combine with GradCache: set mini_batch_size=0")
    run_dir = os.path.join(cfg["output_dir"], cfg["save_name"])
    device, world, rank = join_processes(resolve_device(cfg["device"]))
    say = print if rank == 0 else (lambda *a, **k: None)  # only the main process writes files and prints
    with locked(run_dir) if rank == 0 else contextlib.nullcontext():
        run = _start(cfg, run_dir, device, rank == 0, resume, overwrite)
        steps_per_epoch = len(run.batches_of(0))
        total_steps = cfg["max_steps"] if cfg["max_steps"] > 0 else cfg["epochs"] * steps_per_epoch
        warmup = min(cfg["warmup_steps"], total_steps)
        run.scheduler = get_linear_schedule_with_warmup(run.optimizer, warmup, total_steps)
        if run.state:
            run.optimizer.load_state_dict(run.state["optimizer"])
            run.scheduler.load_state_dict(run.state["scheduler"])
            run.scaler.load_state_dict(run.state["scaler"])
            _set_rng_state(run.state["rng"])
            run.progress = {k: run.state[k] for k in PROGRESS}
            say(f"resumed from {run.last_dir} at step {run.progress['step']} "
                f"(best validation mean rank {run.progress['best']:.3f})")
        else:
            torch.manual_seed(cfg["seed"] + rank)  # different dropout masks in each process
            initial = validate(run.model, run.tokenizer, *run.val_texts, cfg)
            run.progress = dict(step=0, epoch=0, batch_in_epoch=0, best=initial, bad_validations=0, initial=initial)
            if run.main_process:
                save_checkpoint(run.model, run.best_dir)
            _log(run, {"step": 0, "val_mean_rank": initial, "of": len(run.val_texts[0])})
        say(f"{len(run.train)} training papers, {steps_per_epoch} batches/epoch, {total_steps} steps; validation on "
            f"{len(run.val_texts[0])} held-out papers, mean partner rank before training: "
            f"{run.progress['initial']:.3f}")
        _train_loop(run, total_steps)
        if world > 1:
            dist.barrier()  # the others wait until the main process has written the checkpoints
    say(f"validation mean rank of the partner summary ({len(run.val_texts[0])} held-out papers, 1 = perfect): "
        f"untrained {run.progress['initial']:.3f} -> trained (best) {run.progress['best']:.3f}")
    return run.best_dir


@dataclass
class Run:
    """One training run's live objects, read and updated by the loop, validation and checkpoints."""
    cfg: dict[str, Any]
    run_dir: str
    device: torch.device
    main_process: bool
    identity: dict[str, Any]                # its settings and data hash (run_folder.run_identity)
    train: Summaries
    val_texts: tuple[list[str], list[str]]  # each held-out paper's first summary, and its second
    batches_of: Callable[[int], list[list[tuple[str, int, int]]]]  # epoch -> its batches of pairs
    state: dict[str, Any] | None            # the checkpoint resumed from, if any
    model: nn.Module
    train_model: nn.Module                  # `model`, or its torch.compile: same weights
    tokenizer: Any
    head: ReconstructionHead | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: Any = None
    progress: dict[str, Any] = field(default_factory=dict)  # PROGRESS: saved with every checkpoint

    @property
    def best_dir(self) -> str:
        return os.path.join(self.run_dir, "best")

    @property
    def last_dir(self) -> str:
        return os.path.join(self.run_dir, "last")


PROGRESS = ("step", "epoch", "batch_in_epoch", "best", "bad_validations", "initial")


def _start(cfg: dict[str, Any], run_dir: str, device: torch.device, main_process: bool, resume: bool,
           overwrite: bool) -> Run:
    """Check and load everything a run needs, then (main process) clear an earlier run if this one
    starts afresh and write settings.json: a refused start writes nothing."""
    last_dir = os.path.join(run_dir, "last")
    recover_interrupted_save(last_dir)
    fresh = start_afresh(run_dir, resume, overwrite)  # refuses a folder holding another run
    identity = run_identity(cfg)
    summaries = load_summaries(cfg["train_summaries_file"])  # an index: texts are read batch by batch
    train_ids, val_ids = split_validation(summaries, cfg["validation_size"], cfg["seed"])
    train = summaries.subset(train_ids)
    # Validation: each held-out paper's first summary must find its second among all second ones.
    val_texts = [summaries[i][:2] for i in sorted(val_ids)]
    state = None if fresh else load_checkpoint(last_dir, identity)
    model, tokenizer = load_model(last_dir if state else cfg["encoder_checkpoint"], str(device),
                                  pooling=cfg["pooling"], metric=cfg["metric"])  # the model carries both
    train_model = torch.compile(model) if cfg["compile"] else model  # same weights; saving uses `model`
    head = None
    if cfg["objective"] == "sarcse":
        texts = (s for pid in sorted(train) for s in train[pid])
        head = ReconstructionHead(transformer_of(model).config.hidden_size, token_weights(tokenizer, texts, cfg["max_length"]))
        head.to(device)
        if state:
            head.load_state_dict(state["head"])
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"],
                                  fused=device.type == "cuda")
    fp16 = device.type == "cuda" and (cfg["precision"] == "fp16" or
                                      (cfg["precision"] == "auto" and not torch.cuda.is_bf16_supported()))
    scaler = torch.amp.GradScaler(enabled=fp16)  # loss scaling wherever autocast runs in fp16
    if main_process:
        if fresh:
            clear_outputs(run_dir)
        settings.save_settings(run_dir, cfg, temperature_in_use=settings.temperature_for(cfg),
                               processes=world_and_rank()[0], data_sha256=identity["data_sha256"])
        repair_tail(os.path.join(run_dir, "log.jsonl"))  # a run killed mid-record left half a line
    batches_of = functools.lru_cache(maxsize=1)(functools.partial(epoch_batches, train.counts, cfg))
    val = ([t[0] for t in val_texts], [t[1] for t in val_texts])
    return Run(cfg, run_dir, device, main_process, identity, train, val, batches_of, state, model, train_model,
               tokenizer, head, optimizer, scaler)


def _train_loop(run: Run, total_steps: int) -> None:
    """Optimizer steps until total_steps or early stopping, validating and checkpointing every
    eval_every steps. run.progress says where it is, so a resumed run goes on at the same batch."""
    p = run.progress
    run.model.train()
    if run.head is not None:
        run.head.train()
    started = time.time()
    with tqdm(total=total_steps, initial=p["step"], desc="train", dynamic_ncols=True,
              disable=not run.main_process) as bar:  # closed on an error too: its message starts a line
        while p["step"] < total_steps:
            batches = run.batches_of(p["epoch"])[p["batch_in_epoch"]:]
            if not batches and p["batch_in_epoch"] == 0:  # an epoch without a step would loop forever
                raise TrainingError(f"{run.cfg['train_summaries_file']}: the {len(run.train)} training papers give "
                                    f"no batch of two different papers (batch_size={run.cfg['batch_size']})")
            for pairs in batches:
                loss = _optimizer_step(run, pairs)
                p["step"], p["batch_in_epoch"] = p["step"] + 1, p["batch_in_epoch"] + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{p['best']:.3f}")
                if p["step"] % run.cfg["eval_every"] == 0 or p["step"] == total_steps:
                    if _validate_and_checkpoint(run, loss.item(), started):
                        return
                if p["step"] >= total_steps:
                    break
            else:
                p["epoch"], p["batch_in_epoch"] = p["epoch"] + 1, 0


def _optimizer_step(run: Run, pairs: list[tuple[str, int, int]]) -> torch.Tensor:
    read = {pid: run.train[pid] for pid, _, _ in pairs}  # this batch's papers (each once), from the file
    batch = [(pid, read[pid][i], read[pid][j]) for pid, i, j in pairs]
    run.optimizer.zero_grad(set_to_none=True)
    loss = contrastive_step(run.train_model, run.tokenizer, batch, run.cfg, run.device, run.scaler, run.head)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at step {run.progress['step'] + 1}; stopped, the last good "
                            f"checkpoint is in {run.last_dir} (try a lower learning_rate or higher temperature)")
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_([q for group in run.optimizer.param_groups for q in group["params"]],
                                   run.cfg["max_grad_norm"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss


def _validate_and_checkpoint(run: Run, loss: float, started: float) -> bool:
    """Validate; keep best/ if it improved; checkpoint last/. Returns whether patience ran out."""
    p, cfg = run.progress, run.cfg
    score = validate(run.model, run.tokenizer, *run.val_texts, cfg)
    run.model.train()
    _log(run, {"step": p["step"], "loss": loss, "val_mean_rank": score, "lr": run.scheduler.get_last_lr()[0],
               "seconds": round(time.time() - started, 1)})
    if score < p["best"]:
        p["best"], p["bad_validations"] = score, 0
        if run.main_process:
            save_checkpoint(run.model, run.best_dir)
    else:
        p["bad_validations"] += 1
    if run.main_process:
        save_checkpoint(run.model, run.last_dir, training_state={
            **p, "metric": cfg["metric"], "objective": cfg["objective"], "run": run.identity,
            "head": run.head.state_dict() if run.head is not None else None, "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": _rng_state()})
        tqdm.write(f"step {p['step']}: validation mean rank {score:.3f} (best {p['best']:.3f})")
    if cfg["patience"] and p["bad_validations"] >= cfg["patience"]:
        if run.main_process:
            print(f"early stopping: {p['bad_validations']} validations without improvement")
        return True
    return False


def validate(model: nn.Module, tokenizer: Any, val_queries: list[str], val_targets: list[str], cfg: dict) -> float:
    """Mean rank of each held-out paper's second summary for its first, among all second ones (1 = perfect)."""
    cfg = resolve_model_settings(cfg, model)  # "auto": the model's own metric
    q = encode(model, tokenizer, val_queries, cfg["encode_batch_size"], cfg["max_length"], cfg["precision"])
    t = encode(model, tokenizer, val_targets, cfg["encode_batch_size"], cfg["max_length"], cfg["precision"])
    return float(partner_ranks(q, t, metric=cfg["metric"]).mean())


def save_checkpoint(model: nn.Module, folder: str, training_state: dict | None = None) -> None:
    """Save the model (with last/'s training state) into `folder`, swapped in whole. On a full disk the
    half-written copy is removed and the run stops naming the folder; the previous save is kept."""
    try:
        save_model(model, folder, training_state=training_state)  # with its own pooling, metric, max_seq_length
    except OSError as e:
        shutil.rmtree(folder.rstrip("/") + ".tmp", ignore_errors=True)  # save_model writes folder.tmp, then swaps
        raise TrainingError(f"{folder}: cannot save the model ({e.strerror or e}); its previous save is kept") from e


def load_checkpoint(last_dir: str, identity: dict[str, Any]) -> dict[str, Any]:
    """last/training_state.pt, checked to come from this run's settings and data (run_folder)."""
    path = os.path.join(last_dir, "training_state.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and numbers: no code
    except Exception as e:  # noqa: BLE001 -- a damaged file raises one of several unpickling errors
        raise TrainingError(f"{path}: cannot be read ({type(e).__name__}); delete {last_dir} or use --overwrite to "
                            f"start afresh, or train on from its best/ with --encoder_checkpoint") from None
    check_same_run(state, identity, path)
    return state


def _log(run: Run, record: dict) -> None:
    if run.main_process:
        with open(os.path.join(run.run_dir, "log.jsonl"), "a", encoding="utf-8") as f:
            append_jsonl(f, record)


def epoch_batches(counts: Mapping[str, int], cfg: dict, epoch: int) -> list[list[tuple[str, int, int]]]:
    """An epoch's batches of pairs (paper id, i, j); the order depends only on (seed, epoch), so a
    resumed run sees the same batches."""
    pairs = training_pairs(counts, cfg["objective"], random.Random(cfg["seed"] * 100_003 + epoch))
    return [[pairs[i] for i in b] for b in batches_without_duplicates([p[0] for p in pairs], cfg["batch_size"])]


# ----------------------------------------------------------------------------------------------
# One contrastive step, the loss and the pairs


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
    cfg = resolve_model_settings(cfg, model)  # "auto": the model's own metric
    world, rank = world_and_rank()
    mine, sizes = shard(batch, world, rank)
    texts = [p[1] for p in mine] + [p[2] for p in mine]  # [a_1..a_m, b_1..b_m]: 2m texts
    aux = []  # SARCSE's reconstruction loss of each forward pass

    def forward(chunk: list[str]) -> torch.Tensor:  # [len(chunk), dim] float32
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=cfg["max_length"], return_tensors="pt")
        pin = device.type == "cuda"
        enc = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in enc.items()}
        with autocast(device, cfg["precision"]):
            if head is None:
                return embed(model, enc).float()  # through all the model's modules
            features = model(dict(enc))  # all modules; the last layer's token states stay in it
            target = transformer_of(model).get_input_embeddings()(enc["input_ids"]).detach()
            aux.append(head(features["token_embeddings"].float(), enc["input_ids"], enc["attention_mask"], target.float()))
            return features["sentence_embedding"].float()

    size = cfg["mini_batch_size"] or len(texts)
    if size < len(texts) and head is not None:
        raise SettingsError("objective=sarcse does not combine with GradCache: set mini_batch_size=0")
    local, replay = grad_cache(forward, texts, size) if size < len(texts) else (forward(texts), None)
    a, b = gather_pairs(local, sizes, rank)
    loss = contrastive_loss(a, b, cfg["metric"], settings.temperature_for(cfg))
    if aux:  # each process adds its share, so the summed gradient is that of the mean over processes
        loss = loss + cfg["reconstruction_weight"] * aux[0] / world
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if replay is not None:
        replay(local.grad)
    if world > 1:
        sum_gradients([*model.parameters(), *(head.parameters() if head is not None else [])])
    return loss.detach()


def grad_cache(forward: Callable[[list[str]], torch.Tensor], texts: list[str], size: int
               ) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
    """GradCache (Gao et al. 2021). First pass: embed `texts` in mini-batches of `size` without grad,
    keeping the RNG state before each. Returns the embeddings as a leaf for the loss's backward, and
    `replay(grad)`, the second pass: each mini-batch embedded again with grad under the same dropout
    masks, and its slice of the embeddings' gradient pushed through it into the parameters."""
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    states, embs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            embs.append(forward(chunk))
    after = _rng_state()

    def replay(grads: torch.Tensor) -> None:
        start = 0
        for chunk, state in zip(chunks, states):
            _set_rng_state(state)
            forward(chunk).backward(grads[start:start + len(chunk)])
            start += len(chunk)
        _set_rng_state(after)

    return torch.cat(embs).requires_grad_(), replay


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. a, b: [batch, dim], row i of a and b are a positive pair."""
    logits = similarity(a, b, metric) / temperature  # [batch, batch]; the scoring's similarity too
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


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None and torch.cuda.is_available():  # a GPU checkpoint resumed on a CPU: no CUDA RNG
        torch.cuda.set_rng_state_all(state[1])


if __name__ == "__main__":
    settings.cli(train_embedding_model, flags={"resume": False, "overwrite": False})
