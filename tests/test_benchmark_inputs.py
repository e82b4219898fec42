"""The benchmark never shows one model's numbers under another's name, never drops a task or model the user
asked for without an error, and trusts a cached result only after checking it like any input."""
from __future__ import annotations

import json
import os

import pytest

import semantic_benchmark as sb
import settings
from conftest import write_jsonl
from load_data import iter_corpus
from semcse import benchmark as H
from semcse.model import load_model, save_model
from test_benchmark import cfg_for, lexical_run, small_corpus


@pytest.fixture(autouse=True)
def restore_settings():
    saved = settings.resolved()
    yield
    settings.update(**saved.as_dict())


def bench_cli(capsys, *argv) -> tuple[int, str, str]:
    """semantic_benchmark.py's command line in this process: (exit code, stdout, stderr)."""
    try:
        sb.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def two_runs_named_alike(tmp_path, tiny_model_dir) -> tuple[str, str]:
    """A/run/best and B/run/best: two different models whose last two folder names are the same."""
    paths = []
    for parent, pooling in (("A", "cls"), ("B", "mean")):
        m, _ = load_model(tiny_model_dir, "cpu", pooling=pooling)
        paths.append(save_model(m, str(tmp_path / parent / "run" / "best")))
    return paths[0], paths[1]


def test_two_models_named_alike_get_their_own_rows_and_files(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(settings, "packaged_minilm", lambda: tiny_model_dir)  # --baselines without MiniLM: quick
    a, b = two_runs_named_alike(tmp_path, tiny_model_dir)
    corpus = small_corpus(tmp_path)
    trained = save_model(load_model(tiny_model_dir, "cpu")[0], str(tmp_path / "out" / "SemCSE" / "best"))
    cfg = cfg_for(tmp_path, encoder_checkpoint=tiny_model_dir, device="cpu", precision="fp32", baseline_models=f"{a},{b}")
    both = H.run_benchmark(H.cli_embedders("", True, corpus, cfg), cfg, corpus)
    assert {"A/run/best", "B/run/best"} <= set(both) and "SemCSE/best (trained)" in set(both)
    assert len({r["results_file"] for r in both.values()}) == len(both) == 5
    for path, name in ((a, "A/run/best"), (b, "B/run/best")):  # each row holds that model's own numbers
        alone = H.run_benchmark(H.cli_embedders(path, False, corpus, cfg.replace(baseline_models="")), cfg, corpus)
        own = next(iter(alone.values()))
        assert own["scoring"]["pooling"] == both[name]["scoring"]["pooling"] == ("cls" if name[0] == "A" else "mean")
        assert own["tasks"]["title_abstract"]["mrr"] == both[name]["tasks"]["title_abstract"]["mrr"]
    capsys.readouterr()
    H.run_benchmark(H.cli_embedders("", True, corpus, cfg), cfg, corpus)
    out = capsys.readouterr().out
    assert "scoring again" not in out and out.count("title_abstract: already scored") == 5  # no ping-pong
    assert os.path.basename(trained) == "best"


def test_a_path_the_user_typed_must_exist(tmp_path, tiny_model_dir, capsys):
    corpus = small_corpus(tmp_path)
    common = [f"--corpus={corpus}", f"--output_dir={tmp_path / 'out'}", f"--embedding_cache_dir={tmp_path / 'c'}",
              "--device=cpu", "--precision=fp32", f"--encoder_checkpoint={tiny_model_dir}"]
    code, _, err = bench_cli(capsys, f"--model={tiny_model_dir}", f"--queries={tmp_path / 'missing.jsonl'}", *common)
    assert (code, err) == (2, f"error: {tmp_path / 'missing.jsonl'}: file not found (the search queries of the Query "
                              f"task; --queries or setting 'queries_file', \"\" for none)\n")
    code, _, err = bench_cli(capsys, f"--model={tiny_model_dir}", f"--queries_file={tmp_path / 'missing.jsonl'}",
                             *common)
    assert code == 2 and "missing.jsonl: file not found" in err
    code, _, err = bench_cli(capsys, "--baselines", "--queries_file=", f"--baseline_models={tmp_path / 'nope'}",
                             "--save_name=nothing", *common)
    assert code == 2 and err == (f"error: no trained model at {tmp_path / 'out' / 'nothing' / 'best'} (run python "
                                 f"train_embedding_model.py --save_name=nothing, or check --save_name and "
                                 f"--output_dir)\n")
    save_model(load_model(tiny_model_dir, "cpu")[0], str(tmp_path / "out" / "nothing" / "best"))
    code, _, err = bench_cli(capsys, "--baselines", "--queries_file=", f"--baseline_models={tmp_path / 'nope'}",
                             "--save_name=nothing", *common)
    assert (code, err) == (2, f"error: {tmp_path / 'nope'}: no such model folder\n")
    assert not (tmp_path / "out" / "benchmark").exists()  # refused before anything was scored


def test_a_missing_default_is_skipped_and_the_table_says_why(tmp_path, tiny_model_dir, monkeypatch, capsys):
    corpus = small_corpus(tmp_path)
    monkeypatch.setattr(settings, "packaged_minilm", lambda: tiny_model_dir)  # --baselines without MiniLM: quick
    monkeypatch.setitem(settings._DEFAULTS, "output_dir", str(tmp_path / "out"))  # as if these were settings.py's
    monkeypatch.setitem(settings._DEFAULTS, "queries_file", str(tmp_path / "default_queries.jsonl"))
    cfg = cfg_for(tmp_path, encoder_checkpoint=tiny_model_dir, device="cpu", precision="fp32",
                  queries_file=str(tmp_path / "default_queries.jsonl"))
    H.run_benchmark(H.cli_embedders("", True, corpus, cfg), cfg, corpus)
    table = (tmp_path / "out" / "benchmark" / "corpus" / "results.md").read_text()
    assert f"Skipped Query: no queries file {tmp_path / 'default_queries.jsonl'}" in table
    assert (f"Not scored: SemCSE/best (trained): no trained model at {tmp_path / 'out' / 'SemCSE' / 'best'} "
            f"(run python train_embedding_model.py)") in table


def test_baselines_recover_a_best_folder_left_between_its_two_renames(tmp_path, tiny_model_dir):
    corpus = small_corpus(tmp_path)
    best = tmp_path / "out" / "SemCSE" / "best"
    save_model(load_model(tiny_model_dir, "cpu", pooling="mean")[0], str(best))
    os.replace(best, str(best) + ".old")  # a training killed between the two renames of its save
    cfg = cfg_for(tmp_path, encoder_checkpoint=tiny_model_dir, device="cpu", precision="fp32")
    embs = {e.role: e for e in H.cli_embedders("", True, corpus, cfg)}
    assert embs["trained"].scoring["pooling"] == "mean" and best.is_dir()


def test_one_labelled_paper_skips_the_map_with_a_note_and_keeps_the_results(tmp_path, tiny_model_dir, monkeypatch,
                                                                              capsys):
    recs = [json.loads(line) for line in open(small_corpus(tmp_path, labels=False))]
    recs[0]["label"] = "only"
    corpus = write_jsonl(tmp_path / "one_label.jsonl", recs)
    monkeypatch.setattr(settings, "output_dir", str(tmp_path / "out"))
    monkeypatch.setattr(settings, "embedding_cache_dir", "")
    monkeypatch.setattr(settings, "queries_file", "")
    m, tok = load_model(tiny_model_dir, "cpu")
    r = sb.evaluate_model_semantics(m, tok, corpus_file=corpus, precision="fp32")  # as at the end of main.py
    assert r["tasks"]["title_abstract"]["n"] == 12 and "no topic labels" in r["skipped"]["clustering"]
    out = capsys.readouterr().out
    assert "map of the embedding space not drawn: 1 paper of the corpus has a label; a map needs at least 2" in out
    folder = tmp_path / "out" / "benchmark" / "one_label"
    assert (folder / "results.md").exists() and not (folder / "map.png").exists()


@pytest.mark.parametrize("task, broken, why", [
    ("title_abstract", {"n": 30}, "'n_candidates' is missing or not an integer"),
    ("title_abstract", "mean_rank=0.5", "'mean_rank' is 0.5, not between 1 and 12"),
    ("clustering", "knn_agreement=1.5", "'knn_agreement' is 1.5, not between 0 and 1"),
    ("query", "n_candidates=true", "'n_candidates' is missing or not an integer"),
])
def test_a_cached_result_is_checked_like_any_input_and_scored_again(tmp_path, capsys, task, broken, why):
    corpus = small_corpus(tmp_path)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": f"p{i}", "query": f"token{i}"} for i in range(12)])
    first = lexical_run(tmp_path, corpus, queries)["TF-IDF (lexical)"]
    path = first["results_file"]
    saved = json.load(open(path))
    if isinstance(broken, dict):
        saved["tasks"][task] = broken
    else:
        field, value = broken.split("=")
        saved["tasks"][task][field] = json.loads(value)
    json.dump(saved, open(path, "w"))
    capsys.readouterr()
    again = lexical_run(tmp_path, corpus, queries)["TF-IDF (lexical)"]
    out = capsys.readouterr().out
    assert f"{path}: its {task} result is not usable ({why}); scoring it again" in out
    assert again["tasks"][task] == {**first["tasks"][task], "seconds": again["tasks"][task]["seconds"]}


def test_an_empty_label_is_no_class(tmp_path):
    recs = [json.loads(line) for line in open(small_corpus(tmp_path))]
    for i in range(0, 12, 3):
        recs[i]["label"] = "" if i % 2 else "  "
    corpus = write_jsonl(tmp_path / "empty_labels.jsonl", recs)
    assert [p["label"] for p in iter_corpus(corpus)][:4] == [None, "speech", "image", None]
    c = lexical_run(tmp_path, corpus, knn_k=2)["TF-IDF (lexical)"]["tasks"]["clustering"]
    assert (c["n_labelled"], c["skipped_unlabelled"]) == (8, 4)
    assert c["n_labels"] == len({r["label"] for r in recs if r["label"].strip()}) == 4


def test_main_refuses_a_mistyped_queries_file_before_training(tmp_path, tiny_model_dir, summaries_file):
    import subprocess
    import sys

    from conftest import ROOT

    missing = tmp_path / "mistyped.jsonl"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--encoder_checkpoint={tiny_model_dir}",
                           f"--train_summaries_file={summaries_file}", f"--queries_file={missing}",
                           f"--data_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}", "--device=cpu"],
                          capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stderr) == (2, f"error: {missing}: file not found (the search queries of the Query "
                                                 f"task; --queries or setting 'queries_file', \"\" for none)\n")
    assert not (tmp_path / "out").exists()  # nothing trained
