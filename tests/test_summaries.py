"""The summary prompt's checks (generate_train_summaries.summary_problem), keeping papers with some good
summaries, and the quality figures of a summaries file."""
from __future__ import annotations

import pytest
from conftest import write_jsonl
from fake_openai_server import FakeOpenAIServer
from test_generation import cfg_for, lines, make_corpus, run_script

import generate_train_summaries as gs
from semcse import llm

PAPER = {"id": "p", "title": "Graph Networks for Protein Folding",
         "abstract": "Proteins fold into shapes that decide their function. We train graph networks on known "
                     "structures and predict the shape of new proteins from their sequence alone, beating "
                     "earlier methods on a public benchmark of two hundred proteins."}
GOOD = "Learning from known protein shapes lets a model guess how new chains fold from their sequence."


@pytest.mark.parametrize("text,reason", [
    ("Too short to say much.", "has 5 words, not 8 to 60"),
    (" ".join(["word"] * 61), "has 61 words"),
    ("One sentence about folding here. Another one follows it. And a third one ends it.", "has 3 sentences"),
    ("This paper shows how protein shapes can be guessed from sequences alone.", "('This paper')"),
    ("We show that protein shapes can be guessed from sequences alone today.", "('We')"),
    ("The authors show that protein shapes can be guessed from sequences alone.", "('The authors')"),
    ("In our view, protein shapes can be guessed from their sequences alone.", "('our')"),
    ("Protein shapes can be guessed from sequences for 200 proteins at once.", "contains digits"),
    ("Graph networks for protein folding guess shapes of new chains from sequences.", "repeats the title"),
    ("A model can predict the shape of new proteins from their sequence alone, it seems.",
     "copies 8 or more words in a row from the abstract"),
])
def test_each_check_names_its_reason(text, reason):
    assert reason in gs.summary_problem(text, PAPER, [])
    assert gs.summary_problem(GOOD, PAPER, []) is None


def test_all_reasons_at_once():
    copied = "We show: a model can predict the shape of new proteins from their sequence alone in 2024."
    assert gs.summary_problem(copied, PAPER, [copied]) == (
        "mentions the paper or its authors ('We'), contains digits, copies 8 or more words in a row from the "
        "abstract, is nearly the same as summary 1")


def test_near_duplicate_siblings_and_partial_answers():
    twin = "Learning from known protein shapes lets a model guess how new chains fold from the sequence."
    assert gs.summary_problem(twin, PAPER, ["Something else entirely, about other things and ideas.", GOOD]) == \
        "is nearly the same as summary 2"
    other = "Predicting folded structures becomes possible with networks trained on solved examples."
    bad = "We beat every earlier method on the benchmark with a big margin now."
    with pytest.raises(llm.InvalidOutput) as e:
        gs.parse_summaries({"summaries": [GOOD, bad, other, "short one"]}, PAPER, 4)
    assert "only 2 of the 4 summaries are usable" in str(e.value) and "summary 2 mentions the paper" in str(e.value)
    assert e.value.partial == [GOOD, other]  # enough for a training pair: kept if no retry does better
    assert [(d["summary"], d["text"][:5]) for d in e.value.dropped] == [(2, "We be"), (4, "short")]
    with pytest.raises(llm.InvalidOutput) as e:
        gs.parse_summaries({"summaries": [GOOD, bad, bad, bad]}, PAPER, 4)
    assert e.value.partial is None  # one good summary makes no pair


def test_partial_papers_are_kept_with_what_was_dropped(tmp_path):
    srv = FakeOpenAIServer().start()
    try:
        corpus = make_corpus(tmp_path, n=3, directives={"p0": "@fake:twobad:99", "p1": "@fake:twobad:1"})
        cfg = cfg_for(srv, tmp_path, corpus, llm_retries=1)
        assert gs.generate_summaries(cfg)["done"] == 3
        recs = {r["id"]: r for r in lines(cfg.generated_summaries_file)}
        assert len(recs["p0"]["summaries"]) == 2 and recs["p0"]["partial"] is True
        assert [d["reason"] for d in recs["p0"]["dropped"]] == ["mentions the paper or its authors ('this paper')",
                                                                 "contains digits"]
        assert recs["p0"]["attempts"] == 2 and recs["p0"]["served_model"] == "fake/local-model"
        assert len(recs["p1"]["summaries"]) == 4 and "partial" not in recs["p1"] and recs["p1"]["attempts"] == 2
        assert srv.snapshot()["stats"]["with_feedback"] == 2  # the model was told why, each time
    finally:
        srv.stop()


def test_quality_figures_on_hand_made_data(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [dict(PAPER, id="a"), dict(PAPER, id="b")])
    summaries = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "summaries": [GOOD, "We fold 200 proteins with graph networks, with great success."]},
        {"id": "b", "summaries": [GOOD, GOOD, "Predicting folded structures becomes possible with trained networks."]},
        {"id": "missing", "summaries": ["An unknown paper's summary, which has no abstract to compare."]},
    ])
    q = gs.quality(summaries, corpus)
    words = [16, 10, 16, 16, 8, 11]
    assert q["papers"] == 3 and q["summaries"] == 6 and q["distinct_per_paper"] == round(5 / 3, 3)
    assert q["mean_words"] == round(sum(words) / 6, 3)
    assert q["banned_phrases"] == round(1 / 6, 3) and q["digits"] == round(1 / 6, 3)
    # GOOD shares "from their" and "their sequence" with the abstract: 2 of its 15 bigrams; the "we fold"
    # one shares "graph networks" (1 of 9); the last none. Only summaries of papers in the corpus count.
    assert q["abstract_bigram_overlap"] == round((2 / 15 * 3 + 1 / 9 + 0) / 5, 3)
    assert q["pass_all_checks"] == round(3 / 5, 3)  # the "we" one and b's repeated GOOD fail
    table = gs.quality_table(q, "s.jsonl").splitlines()
    assert table[0].startswith("| file | papers | summaries |") and table[1].startswith("|---|")
    assert table[2].startswith("| s.jsonl | 3 | 6 | 1.667 |")
    res = run_script("generate_train_summaries.py", [f"--quality={summaries}", f"--generation_corpus_file={corpus}"])
    assert res.returncode == 0 and res.stdout.splitlines()[2] == table[2].replace("s.jsonl", summaries), res.stderr
