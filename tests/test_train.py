"""Training on a tiny model: it learns, resume equals an uninterrupted run, checkpoints are usable."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from semcse import cli
import settings

from semcse.model import saved_scoring
from train_embedding_model import TrainingError, train_embedding_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, name, tiny_model_dir, summaries_file, **kw):
    cfg = dict(output_dir=str(tmp_path), save_name=name, encoder_checkpoint=tiny_model_dir,
               train_summaries_file=summaries_file, batch_size=8, validation_size=10, eval_every=3,
               max_steps=6, warmup_steps=2, learning_rate=1e-3, precision="fp32", device="cpu", patience=0)
    cfg.update(kw)
    return train_embedding_model(**cfg)


def interrupt_after(monkeypatch, steps):
    """Stop training as Ctrl-C would, right after the checkpoint of step `steps`."""
    import train_embedding_model as T

    real = T.save_checkpoint

    def save_then_interrupt(*args, training_state=None, **kw):
        real(*args, training_state=training_state, **kw)
        if training_state is not None and training_state["step"] >= steps:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_checkpoint", save_then_interrupt)


def log_of(tmp_path, name):
    return [json.loads(x) for x in open(os.path.join(tmp_path, name, "log.jsonl"))]


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path, tiny_model_dir, summaries_file, monkeypatch):
    run(tmp_path, "straight", tiny_model_dir, summaries_file)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_after(m, 3)
        run(tmp_path, "resumed", tiny_model_dir, summaries_file)
    state = torch.load(tmp_path / "resumed" / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 3
    run(tmp_path, "resumed", tiny_model_dir, summaries_file, resume=True)

    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(tmp_path / "straight" / "last" / "training_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "last" / "training_state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 6 and sa["best"] == sb["best"]
    assert sa["scheduler"] == sb["scheduler"]
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    losses = lambda name: [(r["step"], r.get("loss")) for r in log_of(tmp_path, name) if r["step"] > 0]
    assert losses("straight") == losses("resumed")


def test_mean_pooling_and_cosine_lower_the_held_out_partner_rank(tmp_path, tiny_model_dir, summaries_file):
    # SemCSE's default mode (a model's own mean pooling + cosine) on the tiny model, which has no Normalize
    best = run(tmp_path, "learn", tiny_model_dir, summaries_file, pooling="mean", metric="cosine", max_steps=12,
               eval_every=4, warmup_steps=0, validation_size=16)
    log = log_of(tmp_path, "learn")
    initial, later = log[0]["val_mean_rank"], [r["val_mean_rank"] for r in log[1:]]
    assert min(later) < initial - 1.0, (initial, later)
    assert [m["type"].rsplit(".", 1)[-1] for m in json.load(open(os.path.join(best, "modules.json")))] == \
        ["Transformer", "Pooling"]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_papers_setting_on_minilm_lowers_the_held_out_partner_rank(tmp_path, metric):
    # CLS pooling from MiniLM (its CLS token was never trained) on 120 papers of the shipped LLM summaries:
    # the released SemCSE (Euclidean on raw CLS vectors: MiniLM's Normalize module is dropped, and the
    # distances are scaled by the batch's, so the softmax is neither flat nor exploding) and SemCSE_cosine.
    # With the old fixed Euclidean temperature 1.0 on unit vectors this rank got worse (1.26 -> 1.60).
    data = tmp_path / "s.jsonl"
    with open(os.path.join(ROOT, "data", "arxiv_llm_summaries.jsonl"), encoding="utf-8") as f:
        data.write_text("".join(next(f) for _ in range(120)))
    best = run(tmp_path, "paper", settings.packaged_minilm(), str(data), metric=metric, pooling="cls", batch_size=16,
               validation_size=40, max_steps=3, eval_every=3, warmup_steps=0, learning_rate=1e-4)
    log = log_of(tmp_path, "paper")
    assert log[1]["val_mean_rank"] < log[0]["val_mean_rank"] - 0.2, log
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.load(open(os.path.join(best, "modules.json")))]
    assert modules == (["Transformer", "Pooling"] if metric == "euclidean" else ["Transformer", "Pooling", "Normalize"])
    assert saved_scoring(best) == {"pooling": "cls", "metric": metric, "normalized": metric == "cosine"}


def test_resume_refuses_a_checkpoint_of_the_other_metric_or_a_damaged_one(tmp_path, tiny_model_dir, summaries_file):
    run(tmp_path, "m", tiny_model_dir, summaries_file, max_steps=3)
    with pytest.raises(settings.SettingsError, match="metric=euclidean"):
        run(tmp_path, "m", tiny_model_dir, summaries_file, max_steps=6, metric="cosine", resume=True)
    state = tmp_path / "m" / "last" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a damaged checkpoint: named, never a traceback
    with pytest.raises(TrainingError, match=r"training_state.pt: cannot be read \(\w+\); delete .*last"):
        run(tmp_path, "m", tiny_model_dir, summaries_file, max_steps=6, resume=True)


def test_early_stopping_stops_after_patience(tmp_path, tiny_model_dir, summaries_file):
    # learning rate 0: nothing changes, so no validation improves and training stops at patience
    run(tmp_path, "stop", tiny_model_dir, summaries_file, max_steps=60, eval_every=2, patience=2, learning_rate=0.0)
    steps = [r["step"] for r in log_of(tmp_path, "stop")]
    assert steps == [0, 2, 4]


def test_a_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, summaries_file,
                                                                             monkeypatch):
    from semcse import contrastive as C
    import train_embedding_model as T

    calls = {"n": 0}
    real = C.contrastive_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(C, "contrastive_loss", poisoned)  # the loss of contrastive.contrastive_step
    with pytest.raises(T.TrainingError, match="loss is nan at step 5.*last good checkpoint"):
        run(tmp_path, "nan", tiny_model_dir, summaries_file, max_steps=9)
    state = torch.load(tmp_path / "nan" / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 3
    monkeypatch.setattr(T, "contrastive_loss", real)
    run(tmp_path, "nan", tiny_model_dir, summaries_file, max_steps=9, resume=True)  # goes on from step 3
    assert [r["step"] for r in log_of(tmp_path, "nan")] == [0, 3, 6, 9]


def test_main_runs_end_to_end_and_resumes(tmp_path, tiny_model_dir, summaries_file):
    """python main.py: train, then the benchmark on the trained model; --resume goes on from last/."""
    import subprocess
    import sys

    from conftest import ROOT, write_jsonl

    corpus = write_jsonl(tmp_path / "bench.jsonl", [
        {"id": f"b{i}", "title": f"Paper {i} on topic {i % 3}", "label": f"t{i % 3}",
         "abstract": f"We study topic {i % 3} with idea {i}. Results for idea {i} are good."} for i in range(12)])
    args = [sys.executable, os.path.join(ROOT, "main.py"), f"--encoder_checkpoint={tiny_model_dir}",
            f"--train_summaries_file={summaries_file}", f"--benchmark_corpus_file={corpus}",
            "--queries_file=", f"--data_dir={tmp_path / 'data'}",
            f"--output_dir={tmp_path / 'out'}", f"--embedding_cache_dir={tmp_path / 'cache'}", "--batch_size=8",
            "--validation_size=10", "--eval_every=2", "--warmup_steps=1", "--device=cpu", "--precision=fp32"]
    first = subprocess.run(args + ["--max_steps=2"], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "| SemCSE/best (trained) | cls, euclidean, not normalized, 128 tokens |" in first.stdout
    assert "title_abstract: mean_rank=" in first.stdout
    again = subprocess.run(args + ["--max_steps=4", "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout and [r["step"] for r in log_of(tmp_path / "out", "SemCSE")] == [0, 2, 4]
    assert json.load(open(tmp_path / "out" / "SemCSE" / "settings.json"))["max_steps"] == 4


@pytest.fixture
def keep_settings():
    saved = settings.resolved()
    yield
    settings.update(**saved.as_dict())


def test_a_fresh_run_never_mixes_with_the_run_in_its_folder(tmp_path, tiny_model_dir, summaries_file):
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3)
    saved = (tmp_path / "r" / "settings.json").read_text()
    with pytest.raises(TrainingError, match=r"r: holds a training run already; continue it with --resume, "
                                            r"replace it with --overwrite, or choose another --save_name"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3, learning_rate=5e-4)
    with pytest.raises(settings.SettingsError, match="--resume .* or --overwrite .*, not both"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, resume=True, overwrite=True)
    assert (tmp_path / "r" / "settings.json").read_text() == saved
    assert [r["step"] for r in log_of(tmp_path, "r")] == [0, 3]
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=2, eval_every=2, overwrite=True)
    assert [r["step"] for r in log_of(tmp_path, "r")] == [0, 2]  # nothing of the earlier run is left
    state = torch.load(tmp_path / "r" / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and state["run"]["settings"]["learning_rate"] == 1e-3


def test_resume_refuses_other_settings_or_data_by_name(tmp_path, tiny_model_dir, summaries_file):
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3)
    before = [(tmp_path / "r" / f).read_text() for f in ("settings.json", "log.jsonl")]
    with pytest.raises(settings.SettingsError, match=r"training_state.pt: checkpoint was trained with batch_size=8, "
                                                     r"learning_rate=0.001; settings say batch_size=16, "
                                                     r"learning_rate=0.0005"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, batch_size=16, learning_rate=5e-4, resume=True)
    data = open(summaries_file).read()
    with open(summaries_file, "a") as f:
        f.write('{"id": "new", "summaries": ["one more", "and another"]}\n')
    with pytest.raises(TrainingError, match=r"checkpoint was trained on other data than .*summaries.jsonl holds now"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, resume=True)
    after = [(tmp_path / "r" / f).read_text() for f in ("settings.json", "log.jsonl")]
    assert after == before  # refused: nothing written
    with open(summaries_file, "w") as f:
        f.write(data)
    # What does not define the run may change on resume: a longer run, another validation rhythm.
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=6, eval_every=3, patience=4, resume=True)
    assert [r["step"] for r in log_of(tmp_path, "r")] == [0, 3, 6]


def test_two_trainings_of_one_save_name_cannot_share_its_folder(tmp_path, tiny_model_dir, summaries_file):
    from semcse.run_folder import locked

    with locked(str(tmp_path / "busy")):  # what another training holds while it runs
        with pytest.raises(TrainingError, match=rf"busy/lock: another training \(pid {os.getpid()}\) is using this run "
                                                r"folder; wait for it to end or choose another --save_name"):
            run(tmp_path, "busy", tiny_model_dir, summaries_file)
        assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["lock"]  # the refused run wrote nothing
    assert not (tmp_path / "busy").exists()  # the holder made the folder for its lock, and removed it at its end
    run(tmp_path, "busy", tiny_model_dir, summaries_file, max_steps=3)  # released when it ended


def test_a_full_disk_while_saving_stops_in_one_line_and_leaves_no_tmp(tmp_path, tiny_model_dir, summaries_file,
                                                                     monkeypatch, capsys, keep_settings):
    import errno

    import train_embedding_model as T
    from semcse.model import load_model

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)  # the training state, written last into last.tmp/
    argv = [f"--output_dir={tmp_path}", "--save_name=full", f"--encoder_checkpoint={tiny_model_dir}",
            f"--train_summaries_file={summaries_file}", "--batch_size=8", "--validation_size=10", "--eval_every=3",
            "--max_steps=6", "--device=cpu", "--precision=fp32"]
    with pytest.raises(SystemExit) as e:
        cli.cli(T.train_embedding_model, flags={"resume": False, "overwrite": False}, argv=argv)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and re.fullmatch(rf"error: {tmp_path / 'full' / 'last'}: cannot save the model \(No space "
                                              rf"left on device; [\d.]+ [MG]B free on its disk, the model needs about "
                                              rf"[\d.]+ MB\); its previous save is kept", err[-1]), err[-1]
    assert not [p for p in (tmp_path / "full").rglob("*") if ".tmp" in p.name]
    load_model(str(tmp_path / "full" / "best"), "cpu")  # best/ is whole


def test_an_epoch_without_batches_stops_instead_of_looping(tmp_path, tiny_model_dir, summaries_file, monkeypatch):
    import train_embedding_model as T

    monkeypatch.setattr(T, "epoch_batches", lambda counts, cfg, epoch: [])
    with pytest.raises(TrainingError, match=r"summaries.jsonl: the 30 training papers give no batch of two different "
                                            r"papers \(batch_size=8\)"):
        run(tmp_path, "empty", tiny_model_dir, summaries_file)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_named(tmp_path, tiny_model_dir, summaries_file):
    from semcse.model import ModelError

    with pytest.raises(ModelError, match=r"setting 'device': cuda is not available here \(0 CUDA devices\)"):
        run(tmp_path, "gpu", tiny_model_dir, summaries_file, device="cuda")
