"""One configuration, passed down: overrides given as function arguments reach model loading, training
validation and benchmark scoring; `offline` holds per call; Title-Abstract validation; --help."""
import glob
import json
import os
import subprocess
import sys

import pytest

from semcse import model as M
import settings
from semcse import similarity
from conftest import ROOT, write_jsonl

TOPICS = ["graph parsing", "speech recognition", "image segmentation", "machine translation"]


def papers_file(path, n: int = 12) -> str:
    recs = [{"id": f"v{i}", "title": f"Study {i} of {TOPICS[i % 4]} with token{i}",
             "abstract": f"We study {TOPICS[i % 4]} using method token{i}. Results improve by {i} points.",
             "label": TOPICS[i % 4].split()[0]} for i in range(n)]
    return write_jsonl(path, recs)


@pytest.fixture
def fake_hub(monkeypatch, tiny_model_dir):
    """huggingface_hub.snapshot_download replaced: records its keyword arguments and, unless offline,
    'downloads' the tiny model (there is no internet here)."""
    import huggingface_hub

    calls = []

    def snapshot_download(name, **kwargs):
        calls.append({"name": name, **kwargs})
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")
        return tiny_model_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def memory_bounds(monkeypatch):
    """Every memory bound the scoring blocks are sized with."""
    seen = []
    real = similarity.block_rows

    def block_rows(n, memory_mb):
        seen.append(memory_mb)
        return real(n, memory_mb)

    monkeypatch.setattr(similarity, "block_rows", block_rows)
    return seen


def test_offline_refuses_a_hub_name_and_never_asks_the_network(fake_hub):
    with pytest.raises(M.ModelError, match="never downloads.*--offline=false"):
        M.load_model("someone/some-model", "cpu", offline=True)
    assert [c["local_files_only"] for c in fake_hub] == [True]  # the cache only
    assert os.environ.get("HF_HUB_OFFLINE") in (None, "", "0")  # nothing set for the whole process


def test_offline_false_lets_the_download_through(fake_hub):
    model, _ = M.load_model("someone/some-model", "cpu", offline=False)
    assert fake_hub[-1]["local_files_only"] is False and fake_hub[-1]["name"] == "someone/some-model"
    assert model.name_or_path == "someone/some-model"


def test_training_uses_overrides_given_as_arguments(tmp_path, summaries_file, fake_hub, memory_bounds):
    from train_embedding_model import train_embedding_model

    best = train_embedding_model(output_dir=str(tmp_path), save_name="args", encoder_checkpoint="someone/some-model",
                                 offline=False, score_memory_mb=1, train_summaries_file=summaries_file,
                                 batch_size=8, validation_size=10, eval_every=2, max_steps=2, precision="fp32",
                                 device="cpu")
    assert fake_hub and all(c["local_files_only"] is False for c in fake_hub)  # offline=False reached load_model
    assert memory_bounds and set(memory_bounds) == {1}  # and validation's scoring blocks
    saved = json.load(open(tmp_path / "args" / "settings.json"))
    assert (saved["offline"], saved["score_memory_mb"]) == (False, 1) and os.path.isdir(best)


def test_the_benchmark_uses_overrides_given_as_arguments(tmp_path, tiny_model_dir, memory_bounds):
    from semantic_benchmark import evaluate_model_semantics

    model, tok = M.load_model(tiny_model_dir, "cpu")
    result = evaluate_model_semantics(model, tok, corpus_file=papers_file(tmp_path / "corpus.jsonl"),
                                      queries_file="", output_dir=str(tmp_path / "out"),
                                      embedding_cache_dir="", score_memory_mb=2, precision="fp32", knn_k=3)
    assert set(memory_bounds) == {2}
    assert result["tasks"]["clustering"]["k"] == 3
    assert json.load(open(result["results_file"]))["settings"]["score_memory_mb"] == 2


def test_title_abstract_validation_is_logged_and_picks_best(tmp_path, tiny_model_dir, summaries_file, capsys):
    from train_embedding_model import train_embedding_model

    common = dict(output_dir=str(tmp_path), encoder_checkpoint=tiny_model_dir, train_summaries_file=summaries_file,
                  batch_size=8, validation_size=10, eval_every=2, max_steps=6, learning_rate=1e-3, precision="fp32",
                  device="cpu", patience=0, validation_corpus_file=papers_file(tmp_path / "val.jsonl"))
    train_embedding_model(save_name="ta", select_best_by="title_abstract", **common)
    log = [json.loads(line) for line in open(tmp_path / "ta" / "log.jsonl")]
    assert [r["step"] for r in log] == [0, 2, 4, 6] and all("val_title_abstract" in r for r in log)
    assert all(1 <= r["val_title_abstract"] <= 12 for r in log)  # a mean rank among 12 abstracts
    out = capsys.readouterr().out
    assert "validation Title-Abstract mean rank (12 held-out papers" in out and "untrained" in out
    import torch

    state = torch.load(tmp_path / "ta" / "last" / "training_state.pt", weights_only=True)
    assert state["best"] == min(r["val_title_abstract"] for r in log)  # best/ chosen by Title-Abstract
    train_embedding_model(save_name="sum", select_best_by="summaries", **common)
    log = [json.loads(line) for line in open(tmp_path / "sum" / "log.jsonl")]
    state = torch.load(tmp_path / "sum" / "last" / "training_state.pt", weights_only=True)
    assert state["best"] == min(r["val_mean_rank"] for r in log)  # ... or by the partner summaries
    with pytest.raises(settings.SettingsError, match="validation_corpus_file"):
        train_embedding_model(save_name="leak", **{**common, "validation_corpus_file": common["validation_corpus_file"],
                                                   "benchmark_corpus_file": common["validation_corpus_file"]})


@pytest.mark.parametrize("script, own", [("main.py", "--resume"), ("train_embedding_model.py", "--overwrite"),
                                         ("semantic_benchmark.py", "--baselines"),
                                         ("generate_train_summaries.py", "--dry-run"),
                                         ("generate_search_queries.py", "--limit")])
def test_help_lists_options_and_every_setting_with_its_comment(script, own):
    for flag in ("--help", "-h"):
        done = subprocess.run([sys.executable, os.path.join(ROOT, script), flag], capture_output=True, text=True,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        assert own in done.stdout
        for name in settings.Config.__dataclass_fields__:
            assert f"--{name}=" in done.stdout
        assert "--select_best_by='title_abstract'    which validation score picks best/" in done.stdout
        assert "(3.33 -> 7.26)" in done.stdout  # continuation lines of a comment are kept


@pytest.mark.parametrize("script", sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "bench", "*.py"))
                                          if not p.endswith(("common.py", "reproduce_report.py"))))  # modules, not scripts
def test_every_bench_script_answers_help(script):
    """A bench script runs through cli.cli like the others: --help shows its own options, exit 0 (a script that
    parsed its command line by hand answered --help with a traceback)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "options: --key=value" in done.stdout and "--batch_size" in done.stdout
