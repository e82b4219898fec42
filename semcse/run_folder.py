"""A training run's folder, output_dir/save_name/: one training in it at a time, a fresh run never
mixes with an earlier one, and a checkpoint resumes only with the settings and data it was trained on.

    lock            while a training runs: its lock (flock; the kernel drops it when the process dies, even
                    on SIGKILL), with the holder's pid, so a second training of the same save_name is
                    refused by name; removed when the training ends
    best/ last/     models; last/ holds training_state.pt, whose "run" entry is run_identity() below
    settings.json   log.jsonl

A start is checked whole (settings, device and precision, data, model, the folder's run and its
identity, a first validation) before anything in the folder is removed or written: a refused start
leaves the folder as it was, and a folder it had to create for its lock is removed again.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import json
from collections.abc import Iterator
from typing import IO, Any

import settings
from semcse import files
from settings import Config

# The settings that make a run what it is: resuming with any of them changed would continue another
# run's weights, optimizer and batch order under a different recipe. The others (max_steps, epochs,
# patience, eval_every, device, precision, mini_batch_size, file paths, ...) may change on resume:
# extending a run or moving it to another machine is what resume is for.
# So do the settings that change what a validation number means (best/ is kept by comparing them):
# validation_size, seed, select_best_by, benchmark_max_length, and validation_corpus_file's papers (by
# content, run_identity's "validation_sha256").
RUN_SETTINGS = ("encoder_checkpoint", "metric", "pooling", "max_length", "objective", "batch_size", "learning_rate",
                "weight_decay", "warmup_steps", "max_grad_norm", "temperature", "reconstruction_weight",
                "validation_size", "seed", "select_best_by", "benchmark_max_length", "max_train_papers",
                "max_train_summaries")
OUTPUTS = ("best", "last", "log.jsonl")  # what one run writes (and --overwrite removes), besides settings.json


class TrainingError(settings.UserError, ValueError):
    """Training cannot start or go on (a busy or used run folder, a checkpoint of another run, a
    non-finite loss, a full disk); the message names the folder or file and what to do."""


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
    """Hold run_dir/lock for the block, or raise TrainingError naming the process that holds it. The lock
    file is removed on the way out, and so are the folders made for it if the block left them empty."""
    made = _first_missing(run_dir)  # the topmost folder this call creates, if any
    path = os.path.join(run_dir, "lock")
    f = _acquire(run_dir, path)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # while still held: an opener that got this file sees it is gone (_acquire)
        f.close()
        folder = os.path.abspath(run_dir)
        while made:  # the folders made for the lock, innermost first, as far as the block left them empty
            try:
                os.rmdir(folder)
            except OSError:
                break
            if folder == made:
                break
            folder = os.path.dirname(folder)


def _acquire(run_dir: str, path: str) -> IO:
    """run_dir/lock, opened and flocked. Holders remove the file when they end, so a lock taken on a file
    that is no longer at `path` is no lock: then try again on the new one."""
    while True:
        os.makedirs(run_dir, exist_ok=True)
        try:
            f = open(path, "a+", encoding="utf-8")
        except FileNotFoundError:  # the folder was just removed by a refused start that had made it
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise TrainingError(f"{path}: another training (pid {holder}) is using this run folder; wait for it "
                                f"to end or choose another --save_name") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def _first_missing(path: str) -> str | None:
    """The topmost folder of `path` (absolute) that does not exist yet, or None."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def run_identity(cfg: Config) -> dict[str, Any]:
    """What ties a checkpoint to its run: the run's settings, the sha256 of its training data, and that
    of its validation papers (None without validation_corpus_file)."""
    val = cfg.validation_corpus_file
    return {"settings": {k: getattr(cfg, k) for k in RUN_SETTINGS}, "data_sha256": file_sha256(cfg.train_summaries_file),
            "data_file": cfg.train_summaries_file, "validation_sha256": file_sha256(val) if val else None,
            "validation_file": val}


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
    # Its best/ was kept by validation numbers on these papers; numbers on others are not comparable.
    if saved.get("validation_sha256", identity["validation_sha256"]) != identity["validation_sha256"]:
        was = saved.get("validation_file") or "no validation_corpus_file"
        raise TrainingError(f"{state_path}: checkpoint was validated on other papers ({was}) than setting "
                            f"'validation_corpus_file' gives now ({identity['validation_file'] or 'none'}); its "
                            f"validation numbers would not be comparable: resume with its validation papers, or "
                            f"start afresh with --overwrite or another --save_name")


def _plain(value: Any) -> str:
    return repr(value)[1:-1] if isinstance(value, str) else str(value)  # escaped, so one line whatever it holds


def start_afresh(run_dir: str, resume: bool, overwrite: bool) -> bool:
    """Decide whether this run starts from scratch (True) or resumes last/ (False), before any write.
    A folder that holds any output of a run (a trained best/ or last/, a log) is a previous run: it is
    only replaced when `overwrite` says so, and resumed only from a checkpoint in last/."""
    if resume and overwrite:
        raise settings.SettingsError("give --resume (continue the run) or --overwrite (replace it), not both")
    has_checkpoint = os.path.exists(os.path.join(run_dir, "last", "training_state.pt"))
    held = [name for name in OUTPUTS if any(os.path.exists(os.path.join(run_dir, name + s)) for s in ("", ".old"))]
    if held and not (resume or overwrite):
        raise TrainingError(f"{run_dir}: holds a training run already; continue it with --resume, replace it with "
                            f"--overwrite, or choose another --save_name")
    if resume and not has_checkpoint:
        if held:  # e.g. best/ kept and the large last/ deleted: starting at step 0 would replace best/
            raise TrainingError(f"{run_dir}: holds {', '.join(held)} of a run but no checkpoint to resume from "
                                f"(last/training_state.pt); train on from its best/ with --encoder_checkpoint="
                                f"{os.path.join(run_dir, 'best')} and another --save_name, or replace it with --overwrite")
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


def trim_log(path: str, step: int) -> None:
    """Drop the records of log.jsonl after `step`, the checkpoint a run resumes from: a run stopped between
    a validation's record and its checkpoint logged a step that the resumed run does again."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    keep = [line for line in lines if _step(line) <= step]
    if len(keep) < len(lines):
        with files.atomic_write(path) as f:
            f.writelines(keep)


def _step(line: str) -> int:
    try:
        record = json.loads(line)
    except ValueError:
        return 0  # not ours to judge: kept
    return record.get("step", 0) if isinstance(record, dict) and isinstance(record.get("step"), int) else 0
