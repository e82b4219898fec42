"""A training run's folder, output_dir/save_name/: one training in it at a time, a fresh run never
mixes with an earlier one, and a checkpoint resumes only with the settings and data it was trained on.

    lock            the held lock (flock; the kernel drops it when the process dies, even on SIGKILL),
                    with the holder's pid, so a second training of the same save_name is refused by name
    best/ last/     models; last/ holds training_state.pt, whose "run" entry is run_identity() below
    settings.json   log.jsonl
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import settings
from settings import Config

# The settings that make a run what it is: resuming with any of them changed would continue another
# run's weights, optimizer and batch order under a different recipe. The others (max_steps, epochs,
# patience, eval_every, device, precision, mini_batch_size, file paths, ...) may change on resume:
# extending a run or moving it to another machine is what resume is for.
RUN_SETTINGS = ("encoder_checkpoint", "metric", "pooling", "max_length", "objective", "batch_size", "learning_rate",
                "weight_decay", "warmup_steps", "max_grad_norm", "temperature", "reconstruction_weight",
                "validation_size", "seed", "select_best_by", "max_train_papers", "max_train_summaries")
OUTPUTS = ("best", "last", "log.jsonl")  # what one run writes (and --overwrite removes), besides settings.json


class TrainingError(settings.UserError, ValueError):
    """Training cannot start or go on (a busy or used run folder, a checkpoint of another run, a
    non-finite loss, a full disk); the message names the folder or file and what to do."""


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
    """Hold run_dir/lock for the block, or raise TrainingError naming the process that holds it."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "lock")
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise TrainingError(f"{path}: another training (pid {holder}) is using this run folder; wait for it "
                            f"to end or choose another --save_name") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # releases the lock; the file stays (removing it would race with a waiting opener)


def run_identity(cfg: Config) -> dict[str, Any]:
    """What ties a checkpoint to its run: the run's settings and the sha256 of its training data."""
    return {"settings": {k: getattr(cfg, k) for k in RUN_SETTINGS}, "data_sha256": file_sha256(cfg.train_summaries_file),
            "data_file": cfg.train_summaries_file}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def check_same_run(state: dict[str, Any], identity: dict[str, Any], state_path: str) -> None:
    """Refuse to resume a checkpoint (`state`) under other settings or data than it was trained with."""
    # A checkpoint from before run identities were saved knows only its metric and objective.
    saved = state.get("run") or {"settings": {"metric": state["metric"], "objective": state.get("objective", "semcse")}}
    was = saved["settings"]
    now = identity["settings"]
    changed = [k for k in was if k in now and was[k] != now[k]]
    if changed:
        then_, now_ = (", ".join(f"{k}={_plain(values[k])}" for k in changed) for values in (was, now))
        raise settings.SettingsError(f"{state_path}: checkpoint was trained with {then_}; settings say {now_} (resume "
                                     f"with its settings, or start afresh with --overwrite or another --save_name)")
    if saved.get("data_sha256", identity["data_sha256"]) != identity["data_sha256"]:
        raise TrainingError(f"{state_path}: checkpoint was trained on other data than {identity['data_file']} holds "
                            f"now (sha256 {saved['data_sha256'][:12]}..., now {identity['data_sha256'][:12]}...); "
                            f"start afresh with --overwrite or another --save_name")


def _plain(value: Any) -> str:
    return repr(value)[1:-1] if isinstance(value, str) else str(value)  # escaped, so one line whatever it holds


def start_afresh(run_dir: str, resume: bool, overwrite: bool) -> bool:
    """Decide whether this run starts from scratch (True) or resumes last/ (False), before any write.
    A folder whose last/ holds a checkpoint is only replaced when `overwrite` says so."""
    if resume and overwrite:
        raise settings.SettingsError("give --resume (continue the run) or --overwrite (replace it), not both")
    has_checkpoint = os.path.exists(os.path.join(run_dir, "last", "training_state.pt"))
    if has_checkpoint and not (resume or overwrite):
        raise TrainingError(f"{run_dir}: holds a training run already; continue it with --resume, replace it with "
                            f"--overwrite, or choose another --save_name")
    if resume and not has_checkpoint:
        print(f"note: no checkpoint in {os.path.join(run_dir, 'last')}; starting from scratch")
    return not (resume and has_checkpoint)


def clear_outputs(run_dir: str) -> None:
    """Remove an earlier run's outputs (and half-saved folders), so nothing of it mixes into this one."""
    for name in OUTPUTS:
        path = os.path.join(run_dir, name)
        for p in (path, path + ".tmp", path + ".old"):
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
