"""A run folder is never lost or mixed by mistake: every check before any write, a folder with a trained
model is a previous run, and what changes a validation number belongs to the run's identity."""
import hashlib
import json
import os

import pytest
import torch

from semcse import cli
import settings
import train_embedding_model as T
from conftest import write_jsonl
from load_data import DataError
from test_train import log_of, run
from train_embedding_model import TrainingError


def snapshot(folder) -> dict:
    """Every file under `folder` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def papers(path, n: int, prefix: str = "Paper") -> str:
    return write_jsonl(path, [{"id": f"v{i}", "title": f"{prefix} {i} about subject {i}",
                               "abstract": f"This is about subject {i}. It has two sentences."} for i in range(n)])


@pytest.fixture
def keep_settings():
    saved = settings.resolved()
    yield
    settings.update(**saved.as_dict())


def train_cli(tmp_path, tiny_model_dir, summaries_file, *extra, name="r", capsys=None):
    """The training command line; returns (exit code, stderr lines)."""
    argv = [f"--output_dir={tmp_path}", f"--save_name={name}", f"--encoder_checkpoint={tiny_model_dir}",
            f"--train_summaries_file={summaries_file}", "--batch_size=8", "--validation_size=10", "--eval_every=3",
            "--max_steps=3", "--device=cpu", "--precision=fp32", "--validation_corpus_file=", *extra]
    try:
        cli.cli(T.train_embedding_model, flags={"resume": False, "overwrite": False}, argv=argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.splitlines() if capsys else []


@pytest.mark.parametrize("bad, message", [
    ("--precision=fp16", "error: setting 'precision': fp16 needs a CUDA device; use bf16 or fp32 on the CPU"),
    ("--max_length=100000", "error: setting 'max_length' is 100000, beyond the position limit of {model} "
                            "(128 tokens): set it to at most 128"),
])
def test_a_refused_start_removes_and_writes_nothing(tmp_path, tiny_model_dir, summaries_file, capsys, keep_settings,
                                                    bad, message):
    message = message.format(model=tiny_model_dir)
    assert train_cli(tmp_path, tiny_model_dir, summaries_file, capsys=capsys)[0] == 0
    before = snapshot(tmp_path / "r")
    assert "best/model.safetensors" in before and "lock" not in before
    code, err = train_cli(tmp_path, tiny_model_dir, summaries_file, bad, "--overwrite", capsys=capsys)
    assert (code, err[-1:]) == (2, [message])
    assert snapshot(tmp_path / "r") == before  # best/, last/, the log and settings.json as they were
    code, err = train_cli(tmp_path, tiny_model_dir, summaries_file, bad, "--resume", "--max_steps=6", capsys=capsys)
    assert code == 2 and err[-1].startswith("error: ")  # (another max_length is also another run)
    assert snapshot(tmp_path / "r") == before
    code, err = train_cli(tmp_path / "new" / "deeper", tiny_model_dir, summaries_file, bad, capsys=capsys)
    assert (code, err[-1:]) == (2, [message]) and not (tmp_path / "new").exists()  # no lock, no settings.json


def test_a_refused_start_in_a_new_folder_leaves_no_folder(tmp_path, tiny_model_dir, summaries_file):
    with pytest.raises(DataError, match="nothing.jsonl: file not found"):
        run(tmp_path / "out", "fresh", tiny_model_dir, str(tmp_path / "nothing.jsonl"))
    assert not (tmp_path / "out").exists()
    run(tmp_path, "done", tiny_model_dir, summaries_file, max_steps=3)
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["best", "last", "log.jsonl", "settings.json"]


def test_a_folder_with_best_but_no_last_is_a_previous_run(tmp_path, tiny_model_dir, summaries_file):
    import shutil

    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3)
    shutil.rmtree(tmp_path / "r" / "last")  # the large last/ deleted to save space
    before = snapshot(tmp_path / "r")
    with pytest.raises(TrainingError, match="r: holds a training run already"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3)
    with pytest.raises(TrainingError, match=r"r: holds best, log.jsonl of a run but no checkpoint to resume from "
                                            r"\(last/training_state.pt\); train on from its best/ with "
                                            r"--encoder_checkpoint=.*best and another --save_name, or replace it"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3, resume=True)
    os.replace(tmp_path / "r" / "best", tmp_path / "r" / "best.old")  # a kill between a save's two renames
    with pytest.raises(TrainingError, match="r: holds a training run already"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3)
    assert snapshot(tmp_path / "r") == before  # best.old was put back as best/


def test_resume_refuses_other_validation_papers_or_benchmark_length(tmp_path, tiny_model_dir, summaries_file):
    val = papers(tmp_path / "val.jsonl", 6)
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=3, validation_corpus_file=val)
    before = snapshot(tmp_path / "r")
    other = papers(tmp_path / "other.jsonl", 6, prefix="Another paper")
    with pytest.raises(TrainingError, match=r"training_state.pt: checkpoint was validated on other papers "
                                            r"\(.*val.jsonl\) than setting 'validation_corpus_file' gives now "
                                            r"\(.*other.jsonl\)"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=6, validation_corpus_file=other, resume=True)
    with pytest.raises(TrainingError, match="checkpoint was validated on other papers"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=6, validation_corpus_file="", resume=True)
    with pytest.raises(settings.SettingsError, match=r"checkpoint was trained with benchmark_max_length=0; settings "
                                                     r"say benchmark_max_length=64"):
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=6, validation_corpus_file=val,
            benchmark_max_length=64, resume=True)
    assert snapshot(tmp_path / "r") == before
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=6, validation_corpus_file=val, resume=True)


def test_validation_papers_are_compared_with_the_benchmark_by_content(tmp_path, tiny_model_dir, summaries_file):
    bench = papers(tmp_path / "bench.jsonl", 6)
    os.symlink(bench, tmp_path / "link.jsonl")
    copy = write_jsonl(tmp_path / "copy.jsonl", [{**json.loads(line), "title": json.loads(line)["title"].upper() + "."}
                                                 for line in open(bench)][:3] + [
        {"id": "x", "title": "Unrelated", "abstract": "Something else. Entirely."}])
    for val, shared in ((str(tmp_path / "link.jsonl"), "6 of its 6"), (copy, "3 of its 4")):
        with pytest.raises(settings.SettingsError, match=rf"setting 'validation_corpus_file': {shared} papers are in "
                                                         rf"the benchmark corpus .*bench.jsonl \(e.g. '(PAPER|Paper) 0"):
            run(tmp_path, "leak", tiny_model_dir, summaries_file, validation_corpus_file=val, benchmark_corpus_file=bench)
    assert not (tmp_path / "leak").exists()


def test_a_validation_corpus_of_one_paper_is_refused(tmp_path, tiny_model_dir, summaries_file):
    one = papers(tmp_path / "one.jsonl", 1)
    with pytest.raises(DataError, match=r"one.jsonl: 1 paper; the Title-Abstract validation \(setting "
                                        r"'validation_corpus_file'\) ranks each paper's partner among all papers and "
                                        r"needs at least 2"):
        run(tmp_path, "one", tiny_model_dir, summaries_file, validation_corpus_file=one)


def test_a_resume_after_ctrl_c_between_log_and_checkpoint_logs_each_step_once(tmp_path, tiny_model_dir,
                                                                               summaries_file, monkeypatch):
    real = T.save_checkpoint

    def interrupted_at_step_6(model, folder, training_state=None):
        if training_state is not None and training_state["step"] == 6:
            raise KeyboardInterrupt  # step 6 is logged, its checkpoint not written
        real(model, folder, training_state=training_state)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(T, "save_checkpoint", interrupted_at_step_6)
        run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=9)
    assert [r["step"] for r in log_of(tmp_path, "r")] == [0, 3, 6]
    assert torch.load(tmp_path / "r" / "last" / "training_state.pt", weights_only=True)["step"] == 3
    run(tmp_path, "r", tiny_model_dir, summaries_file, max_steps=9, resume=True)
    assert [r["step"] for r in log_of(tmp_path, "r")] == [0, 3, 6, 9]
