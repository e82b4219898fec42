"""bench/reproduce.py end to end on the tiny model and tiny corpora: search, table, curve, report; resumable."""
import json
import os

import pytest

import settings
from conftest import ROOT, write_jsonl


@pytest.fixture
def tiny_reproduction(tmp_path, tiny_model_dir, summaries_file, monkeypatch):
    """bench/reproduce.py shrunk: one configuration a family, the tiny model, 20-paper corpora, two seeds."""
    import bench.reproduce as R
    import bench.reproduce_report as RR
    from load_data import load_corpus

    small = {}
    for name, path in {"arxiv_benchmark": "data/arxiv_benchmark.jsonl", "val": "data/arxiv_val.jsonl",
                       "sci_abstracts_dev": "data/arxiv_val.jsonl", "medical_abstracts": "data/arxiv_val.jsonl"}.items():
        papers = load_corpus(os.path.join(ROOT, path))[:20]
        small[name] = write_jsonl(tmp_path / f"{name}_small.jsonl", papers)  # folders are named after files
    monkeypatch.setattr(R, "corpora", lambda flags: small)
    monkeypatch.setattr(R, "VALIDATION", small["val"])
    monkeypatch.setattr(R, "GRIDS", {"semcse": [(1e-3, 0.05, 8)], "cls_euclidean": [(1e-3, 0.05, 8)],
                                     "cls_cosine": [(1e-3, 0.1, 8)]})
    monkeypatch.setattr(R, "FAMILIES", {"semcse": {"pooling": "mean", "metric": "cosine"},
                                        "cls_euclidean": {"pooling": "cls", "metric": "euclidean"},
                                        "cls_cosine": {"pooling": "cls", "metric": "cosine"}})
    monkeypatch.setattr(R, "BASES", {f: R.Job(j.name, j.corpora, model=tiny_model_dir, load=dict(j.load, **(
        {"pooling": "mean", "metric": "cosine"} if f == "semcse" else {}))) for f, j in R.BASES.items()})
    monkeypatch.setattr(R, "CURVE_PAPERS", (20,))
    monkeypatch.setattr(R, "LONGER", (("cls_euclidean", 1e-3, 0.05, 8, 2), ("semcse", 1e-3, 0.05, 8, 3)))
    monkeypatch.setattr(RR, "ROOT", str(tmp_path))  # docs/ of the report
    os.makedirs(tmp_path / "docs")
    for k, v in dict(encoder_checkpoint=tiny_model_dir, train_summaries_file=summaries_file, validation_size=10,
                     precision="fp32", device="cpu", knn_k=3, encode_batch_size=16).items():
        monkeypatch.setattr(settings, k, v)
    flags = dict(R.FLAGS, out=str(tmp_path / "out"), seeds=2, budget_pairs=16, shared=str(tmp_path), workers=2)
    # the other-pairs rows read SciTLDR from --shared; ACLSum and Qwen come from data/
    write_jsonl(tmp_path / "scitldr_multi.jsonl", [json.loads(x) for x in open(summaries_file)])
    return R, flags, tmp_path


def test_reproduce_runs_every_phase_and_resumes(tiny_reproduction, capsys):
    R, flags, tmp_path = tiny_reproduction
    R.main(**flags)
    sweep = json.load(open(tmp_path / "out" / "sweep.json"))
    assert set(sweep["chosen"]) == {"semcse", "cls_euclidean", "cls_cosine"}
    assert sweep["chosen"]["semcse"]["train"]["max_steps"] == 2  # 16 pairs at batch 8: 2 steps
    results = {(p.parent.name, json.load(open(p))["model"]): json.load(open(p))
               for p in (tmp_path / "out" / "benchmark").glob("*/*.json")}
    for job in ("minilm", "tfidf", "semcse-s0", "semcse-s1", "paper_cls_euclidean-s1", "simcse_unsup-s0",
                "sarcse-s1", "scitldr-s0", "aclsum-s1", "qwen-s0", "curve-n20-s1", "curve-2sum-s0"):
        r = results["arxiv_benchmark_small", job]
        assert set(r["tasks"]) == {"title_abstract", "abstract_segments", "query", "clustering"}, job
    other = results["sci_abstracts_dev_small", "semcse-s0"]
    assert "query" in other["skipped"] and "clustering" in other["tasks"]
    assert not os.path.exists(tmp_path / "out" / "runs" / "semcse-s0" / "last")  # scored: best/ is kept
    assert os.path.exists(tmp_path / "out" / "runs" / "semcse-s0" / "best" / "modules.json")
    curve = json.load(open(tmp_path / "out" / "runs" / "curve-n20-s0" / "settings.json"))
    assert curve["max_train_papers"] == 20 and curve["seed"] == 0
    longer = json.load(open(tmp_path / "out" / "runs" / "longer-semcse-lr0.001-t0.05-b8-6steps" / "settings.json"))
    assert (longer["max_steps"], longer["eval_every"], longer["pooling"]) == (6, 1, "mean")  # 3 x 16 pairs
    assert ("val_small", "longer-cls_euclidean-lr0.001-t0.05-b8-4steps") in results

    text = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| **SemCSE** (MiniLM + LLM summary pairs)" in text and " ± " in text and "| 2 |" in text
    assert "## Claims, checked" in text and "chosen**" in text
    longer_row = next(line for line in text.splitlines() if line.startswith("| longer-semcse-"))
    assert "| 48 | 0: " in longer_row and "6: " in longer_row and "not scored" not in longer_row
    assert (tmp_path / "docs" / "data_size_curve.png").stat().st_size > 10_000

    results = sorted((tmp_path / "out" / "benchmark").glob("*/*.json"))
    written = [p.stat().st_mtime_ns for p in results]
    capsys.readouterr()
    R.main(**flags)  # everything is done: nothing is trained or scored again
    assert capsys.readouterr().out.count("jobs done already; 0 to run") == 4  # sweep, table, curve, longer
    assert [p.stat().st_mtime_ns for p in results] == written


def test_report_row_cut_before_a_task_says_not_scored():
    """A model stopped after some of its tasks (all-mpnet-base-v2 on a slow CPU) shows what it has; the rest
    reads "not scored", not nan, and it gets no Perf."""
    import bench.reproduce_report as RR

    rows = {"minilm": {"title_abstract": [2.0], "clustering": [0.50]},
            "mpnet": {"title_abstract": [1.9]},
            "semcse": {"title_abstract": [1.95, 1.97], "clustering": [0.52, 0.53]}}
    lines = RR.table(rows, {"shared": "", "out": ""})
    mpnet = next(line for line in lines if line.startswith("| all-mpnet-base-v2"))
    assert "| 1.90 | not scored | – | 1 |" in mpnet and "nan" not in "\n".join(lines)
    semcse = next(line for line in lines if line.startswith("| **SemCSE**"))
    assert "1.96 ± 0.01" in semcse and "0.525 ± 0.007" in semcse
