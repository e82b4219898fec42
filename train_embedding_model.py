"""In-batch contrastive training on pairs of different summaries of one abstract (SemCSE).

Each batch holds `batch_size` pairs (a_i, b_i) of two different summaries of paper i, no paper
twice. Every b_j (j != i) is a negative for a_i. The loss is InfoNCE in both directions:

    logits[i, j] = sim(a_i, b_j) / temperature        sim = cosine, or minus Euclidean distance
    loss = ( CE(logits, diag) + CE(logits^T, diag) ) / 2

Euclidean mode uses the plain (not squared) distance ||a - b||_2 of the raw CLS vectors, the
distance the released SemCSE model is evaluated with (a Normalize module of the base model is
dropped); the distances enter the loss in units of the batch's mean distance between non-partners
(contrastive.contrastive_loss), so the temperature means the same for any scale of the vectors.

Other objectives (setting `objective`), on the same data and loss, for comparison:
- simcse_unsup (SimCSE, Gao et al. 2021): a_i = b_i = one summary; the two views differ only by
  dropout, since the batch is embedded in train mode with a fresh mask per row.
- sarcse (SARCSE, Liu et al. 2024): simcse_unsup + reconstruction_weight * a token-reconstruction
  loss from a training-time head (sarcse.ReconstructionHead); the saved model has no head.

Reading order: train_embedding_model (the run), the loop, validation and checkpoints; one contrastive
step (process sharding, GradCache), the loss and the pairs are in semcse/contrastive.py. The model settings
(pooling, metric, lengths, precision, device) are decided once, at the start, as the run's ModelSetup
(semcse/model_setup.py), which every step, validation and checkpoint receives.

    python train_embedding_model.py [--resume | --overwrite] [--key=value ...]
"""
from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

import settings
from load_data import (append_jsonl, at_least_two, batches_without_duplicates, load_corpus, load_summaries,
                       papers_in_common, repair_tail, split_validation)
from semcse import cli, files
from semcse.benchmark_tasks import task_title_abstract
from semcse.contrastive import (contrastive_loss, contrastive_step, rng_state,  # noqa: F401 -- re-exported
                                set_rng_state, training_pairs)
from semcse.distributed import join_processes, world_and_rank
from semcse.model import encode, load_model, partner_ranks, resolve_device, save_model, transformer_of
from semcse.model_setup import ModelSetup, resolve_model_settings, training_setup
from semcse.run_folder import (TrainingError, check_same_run, clear_outputs, locked, run_identity, start_afresh,
                               trim_log)
from semcse.sarcse import ReconstructionHead, token_weights
from settings import Config, SettingsError


def train_embedding_model(cfg: Config | None = None, resume: bool = False, overwrite: bool = False,
                          **overrides: Any) -> str:
    """Train with `cfg` (default: the settings) plus `overrides`, keep the best checkpoint; returns its folder.

    Folders under output_dir/save_name/: best/ (lowest validation mean rank of select_best_by; a
    sentence-transformers model), last/ (latest validated state + training_state.pt, for `resume`),
    settings.json, log.jsonl. A folder that holds a run is continued (`resume`, same settings and data
    only) or replaced (`overwrite`), never mixed with another run; one training at a time uses it.
    """
    cfg = (cfg or settings.resolved()).replace(**overrides)
    cfg = resolve_model_settings(cfg, cfg.encoder_checkpoint)  # pooling, metric "auto": the encoder's own
    if cfg.objective == "sarcse" and cfg.mini_batch_size:
        raise SettingsError("objective=sarcse does not combine with GradCache: set mini_batch_size=0")
    run_dir = os.path.join(cfg.output_dir, cfg.save_name)
    device, world, rank = join_processes(resolve_device(cfg.device))
    say = print if rank == 0 else (lambda *a, **k: None)  # only the main process writes files and prints
    with locked(run_dir) if rank == 0 else contextlib.nullcontext():
        run = _start(cfg, run_dir, device, rank == 0, resume, overwrite)  # every check; writes nothing
        steps_per_epoch = len(run.batches_of(0))
        total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
        warmup = min(cfg.warmup_steps, total_steps)
        run.scheduler = get_linear_schedule_with_warmup(run.optimizer, warmup, total_steps)
        if run.state:
            run.optimizer.load_state_dict(run.state["optimizer"])
            run.scheduler.load_state_dict(run.state["scheduler"])
            run.scaler.load_state_dict(run.state["scaler"])
            set_rng_state(run.state["rng"])
            run.progress = {k: run.state[k] for k in PROGRESS}
            say(f"resumed from {run.last_dir} at step {run.progress['step']} "
                f"(best validation mean rank {run.progress['best']:.3f})")
        else:
            torch.manual_seed(cfg.seed + rank)  # different dropout masks in each process
            scores = validation_scores(run)  # the first forward passes on the data: still before any write
            initial = scores[_selected_by(cfg)]
            run.progress = dict(step=0, epoch=0, batch_in_epoch=0, best=initial, bad_validations=0, initial=initial,
                                initial_scores=scores, best_scores=scores)
        _claim_folder(run)
        say(f"{len(run.train)} training papers, {steps_per_epoch} batches/epoch, {total_steps} steps; validation on "
            f"{len(run.val_texts[0])} held-out papers, mean partner rank before training: "
            f"{run.progress['initial_scores']['summaries']:.3f}")
        _train_loop(run, total_steps)
        if world > 1:
            dist.barrier()  # the others wait until the main process has written the checkpoints
    before, after = run.progress["initial_scores"], run.progress["best_scores"]
    say(f"validation mean rank of the partner summary ({len(run.val_texts[0])} held-out papers, 1 = perfect): "
        f"untrained {before['summaries']:.3f} -> trained (best) {after['summaries']:.3f}")
    if "title_abstract" in before:
        say(f"validation Title-Abstract mean rank ({len(run.val_papers)} held-out papers of "
            f"{cfg.validation_corpus_file}): untrained {before['title_abstract']:.3f} -> trained (best) "
            f"{after['title_abstract']:.3f}")
    return run.best_dir


@dataclass
class Run:
    """One training run's live objects, read and updated by the loop, validation and checkpoints."""
    cfg: Config
    run_dir: str
    setup: ModelSetup                       # the model settings, decided once (pooling, metric, ..., device)
    main_process: bool
    identity: dict[str, Any]                # its settings and data hash (run_folder.run_identity)
    train: dict[str, list[str]]             # paper id -> its summaries (training papers only)
    val_texts: tuple[list[str], list[str]]  # each held-out paper's first summary, and its second
    val_papers: list[dict]                  # validation_corpus_file's papers (Title-Abstract), or []
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


# best / initial: the select_best_by score; *_scores: every validation score then (untrained, best/)
PROGRESS = ("step", "epoch", "batch_in_epoch", "best", "bad_validations", "initial", "initial_scores", "best_scores")


def _start(cfg: Config, run_dir: str, device: torch.device, main_process: bool, resume: bool,
           overwrite: bool) -> Run:
    """Check and load everything a run needs; writes nothing (_claim_folder does, after the first
    validation), so a refused start leaves the folder as it was."""
    last_dir = os.path.join(run_dir, "last")
    for folder in (last_dir, os.path.join(run_dir, "best")):  # a kill between a save's two renames
        files.recover_interrupted_folder(folder)
    fresh = start_afresh(run_dir, resume, overwrite)  # refuses a folder holding another run
    train, val = training_data(cfg)
    val_papers = _validation_corpus(cfg)
    identity = run_identity(cfg)
    state = None if fresh else load_checkpoint(last_dir, identity)
    # The model carries pooling and metric. Euclidean trains and ranks raw vectors, as the released SemCSE
    # (CLS, no normalization): between unit vectors the distance is a function of the cosine.
    model, tokenizer = load_model(last_dir if state else cfg.encoder_checkpoint, str(device), pooling=cfg.pooling,
                                  metric=cfg.metric, normalize=False if cfg.metric == "euclidean" else None,
                                  offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
    setup = training_setup(cfg, model, device, validates_papers=bool(val_papers))  # and refuses what cannot run
    train_model = torch.compile(model) if cfg.compile else model  # same weights; saving uses `model`
    head = None
    if cfg.objective == "sarcse":
        texts = (s for pid in sorted(train) for s in train[pid])
        head = ReconstructionHead(transformer_of(model).config.hidden_size,
                                  token_weights(tokenizer, texts, setup.max_length))
        head.to(device)
        if state:
            head.load_state_dict(state["head"])
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(enabled=setup.precision == "fp16")  # loss scaling wherever autocast runs in fp16
    counts = {pid: len(texts) for pid, texts in train.items()}  # pairs index into a paper's summaries
    batches_of = functools.lru_cache(maxsize=1)(functools.partial(epoch_batches, counts, cfg))
    return Run(cfg, run_dir, setup, main_process, identity, train, val, val_papers, batches_of, state, model,
               train_model, tokenizer, head, optimizer, scaler)


def training_data(cfg: Config) -> tuple[dict[str, list[str]], tuple[list[str], list[str]]]:
    """(training papers {id: summaries}, validation texts): validation_size papers are held out (seeded);
    each held-out paper's first summary must find its second among all second ones. max_train_papers
    samples the rest (seeded, so a data-size curve keeps the validation papers); max_train_summaries
    keeps each paper's first summaries."""
    summaries = load_summaries(cfg.train_summaries_file)
    train_ids, val_ids = split_validation(summaries, cfg.validation_size, cfg.seed)
    if cfg.max_train_papers:
        if cfg.max_train_papers > len(train_ids):
            raise SettingsError(f"setting 'max_train_papers' is {cfg.max_train_papers}, but "
                                f"{cfg.train_summaries_file} has {len(train_ids)} training papers")
        train_ids = sorted(random.Random(cfg.seed).sample(train_ids, cfg.max_train_papers))
    keep = cfg.max_train_summaries or None
    train = {pid: summaries[pid][:keep] for pid in train_ids}
    val_ids = sorted(val_ids)
    return train, ([summaries[i][0] for i in val_ids], [summaries[i][1] for i in val_ids])


def _claim_folder(run: Run) -> None:
    """What a start writes, once every check passed: a fresh run removes an earlier run's outputs (after
    --overwrite) and keeps the untrained model as best/; settings.json; the log (a resumed run drops
    the records after its checkpoint, which it writes again)."""
    if not run.main_process:
        return
    log = os.path.join(run.run_dir, "log.jsonl")
    if run.state is None:
        clear_outputs(run.run_dir)
    files.save_settings(run.run_dir, run.cfg, temperature_in_use=settings.temperature_for(run.cfg),
                        processes=world_and_rank()[0], data_sha256=run.identity["data_sha256"])
    repair_tail(log)  # a run killed mid-record left half a line
    trim_log(log, run.progress["step"])
    if run.state is None:
        save_checkpoint(run.model, run.best_dir)
        _log(run, {"step": 0, **_logged(run.progress["initial_scores"]), "of": len(run.val_texts[0])})


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
                raise TrainingError(f"{run.cfg.train_summaries_file}: the {len(run.train)} training papers give "
                                    f"no batch of two different papers (batch_size={run.cfg.batch_size})")
            for pairs in batches:
                loss = _optimizer_step(run, pairs)
                p["step"], p["batch_in_epoch"] = p["step"] + 1, p["batch_in_epoch"] + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", best=f"{p['best']:.3f}")
                if p["step"] % run.cfg.eval_every == 0 or p["step"] == total_steps:
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
    loss = contrastive_step(run.train_model, run.tokenizer, batch, run.cfg, run.setup, run.scaler, run.head)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at step {run.progress['step'] + 1}; stopped, the last good "
                            f"checkpoint is in {run.last_dir} (try a lower learning_rate or higher temperature)")
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_([q for group in run.optimizer.param_groups for q in group["params"]],
                                   run.cfg.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss


def _validate_and_checkpoint(run: Run, loss: float, started: float) -> bool:
    """Validate; keep best/ if it improved; checkpoint last/. Returns whether patience ran out."""
    p, cfg = run.progress, run.cfg
    scores = validation_scores(run)
    score = scores[_selected_by(cfg)]
    run.model.train()
    _log(run, {"step": p["step"], "loss": loss, **_logged(scores), "lr": run.scheduler.get_last_lr()[0],
               "seconds": round(time.time() - started, 1)})
    if score < p["best"]:
        p["best"], p["best_scores"], p["bad_validations"] = score, scores, 0
        if run.main_process:
            save_checkpoint(run.model, run.best_dir)
    else:
        p["bad_validations"] += 1
    if run.main_process:
        save_checkpoint(run.model, run.last_dir, training_state={
            **p, "metric": run.setup.metric, "objective": cfg.objective, "run": run.identity,
            "head": run.head.state_dict() if run.head is not None else None, "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng_state()})
        tqdm.write(f"step {p['step']}: validation mean rank ({_selected_by(cfg)}) {score:.3f} (best {p['best']:.3f})")
    if cfg.patience and p["bad_validations"] >= cfg.patience:
        if run.main_process:
            print(f"early stopping: {p['bad_validations']} validations without improvement")
        return True
    return False


def validation_scores(run: Run) -> dict[str, float]:
    """Every validation score (mean ranks, lower = better): "summaries", the partner-summary rank of the
    held-out training papers, and with a validation corpus "title_abstract" on its papers."""
    scores = {"summaries": validate(run.model, run.tokenizer, *run.val_texts, run.cfg, run.setup)}
    if run.val_papers:
        scores["title_abstract"] = validate_title_abstract(run.model, run.tokenizer, run.val_papers, run.cfg,
                                                           run.setup)
    return scores


def validate_title_abstract(model: nn.Module, tokenizer: Any, papers: list[dict], cfg: Config,
                            setup: ModelSetup) -> float:
    """Title-Abstract mean rank on `papers`, scored as the benchmark scores it: the same task, encode()
    and similarity (the run's metric), at the model's benchmark max length (setup.scoring_max_length)."""
    def embed(texts: list[str]):
        return encode(model, tokenizer, texts, cfg.encode_batch_size, setup.scoring_max_length, setup.precision,
                      show_progress=False)

    return task_title_abstract(embed, papers, setup.metric, cfg.score_memory_mb)["mean_rank"]


def validate(model: nn.Module, tokenizer: Any, val_queries: list[str], val_targets: list[str], cfg: Config,
             setup: ModelSetup) -> float:
    """Mean rank of each held-out paper's second summary for its first, among all second ones (1 = perfect)."""
    q = encode(model, tokenizer, val_queries, cfg.encode_batch_size, setup.max_length, setup.precision)
    t = encode(model, tokenizer, val_targets, cfg.encode_batch_size, setup.max_length, setup.precision)
    return float(partner_ranks(q, t, metric=setup.metric, memory_mb=cfg.score_memory_mb).mean())


def save_checkpoint(model: nn.Module, folder: str, training_state: dict | None = None) -> None:
    """Save the model (with last/'s training state) into `folder`, swapped in whole. On a full disk the
    half-written copy is removed and the run stops naming the folder and the free space (model.save_model);
    the previous save is kept."""
    save_model(model, folder, training_state=training_state)  # with its own pooling, metric, max_seq_length


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


def _validation_corpus(cfg: Config) -> list[dict]:
    """validation_corpus_file's papers ([] when off): at least two, and none of the benchmark's (compared by
    content: a copy or a link of the benchmark file would select best/ on the papers it scores)."""
    path = cfg.validation_corpus_file
    if not path:
        return []
    papers = at_least_two(load_corpus(path), path, "the Title-Abstract validation (setting 'validation_corpus_file')")
    bench = cfg.benchmark_corpus_file
    shared = papers_in_common(papers, bench) if os.path.isfile(bench) else []
    if shared:
        raise SettingsError(f"setting 'validation_corpus_file': {len(shared)} of its {len(papers)} papers are in the "
                            f"benchmark corpus {bench} (e.g. {shared[0]!r}): validate on held-out training-pool "
                            f"papers, never on what the benchmark scores")
    return papers


def _selected_by(cfg: Config) -> str:
    """The score that picks best/: select_best_by, or the summaries when there is no validation corpus."""
    return cfg.select_best_by if cfg.validation_corpus_file else "summaries"


def _logged(scores: dict[str, float]) -> dict[str, float]:
    """The validation scores as log.jsonl names them."""
    names = {"summaries": "val_mean_rank", "title_abstract": "val_title_abstract"}
    return {names[k]: v for k, v in scores.items()}


def _log(run: Run, record: dict) -> None:
    if run.main_process:
        with open(os.path.join(run.run_dir, "log.jsonl"), "a", encoding="utf-8") as f:
            append_jsonl(f, record)


def epoch_batches(counts: Mapping[str, int], cfg: Config, epoch: int) -> list[list[tuple[str, int, int]]]:
    """An epoch's batches of pairs (paper id, i, j); the order depends only on (seed, epoch), so a
    resumed run sees the same batches."""
    pairs = training_pairs(counts, cfg.objective, random.Random(cfg.seed * 100_003 + epoch))
    return [[pairs[i] for i in b] for b in batches_without_duplicates([p[0] for p in pairs], cfg.batch_size)]


if __name__ == "__main__":
    cli.cli(train_embedding_model, flags={"resume": False, "overwrite": False})
