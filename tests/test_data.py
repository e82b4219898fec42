"""Data formats: clear errors with file and line, skipped papers reported, pairs, the batch sampler."""
import json
import os
import random
import re
from collections import Counter

import pytest

import load_data as L
import settings
from conftest import ROOT, write_jsonl


def test_corpus_loads_and_errors_name_file_and_line(tmp_path):
    good = {"id": "a", "title": "T", "abstract": "An abstract.", "label": "cs"}
    p = write_jsonl(tmp_path / "c.jsonl", [good, {"id": "b", "title": "T2", "abstract": "Another."}])
    papers = L.load_corpus(p)
    assert [x["id"] for x in papers] == ["a", "b"] and papers[1]["label"] is None

    cases = [
        ([good, "{not json"], ":2: not valid JSON"),
        ([good, {"id": "b", "title": "T"}], ":2: missing field 'abstract'"),
        ([good, {"id": "b", "title": "", "abstract": "x"}], ":2: field 'title' is empty"),
        ([good, {"id": 5, "title": "T", "abstract": "x"}], ":2: field 'id' must be str"),
        ([good, good], ":2: duplicate id 'a' (first on line 1)"),
        ([good, "[1, 2]"], ":2: expected a JSON object"),
    ]
    for records, message in cases:
        bad = write_jsonl(tmp_path / "bad.jsonl", records)
        with pytest.raises(L.DataError) as e:
            L.load_corpus(bad)
        assert str(e.value) == f"{bad}{message}" or str(e.value).startswith(f"{bad}{message}")

    with pytest.raises(L.DataError, match="missing.jsonl: file not found"):
        L.load_corpus(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(L.DataError, match="no papers"):
        L.load_corpus(str(tmp_path / "empty.jsonl"))


def test_summaries_skip_papers_with_fewer_than_two_and_report_it(tmp_path, capsys):
    p = write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "summaries": ["one", "two", "two "]},      # duplicates collapse: 2 distinct
        {"id": "b", "summaries": ["only one", "only one"]},  # 1 distinct -> skipped
        {"id": "c", "summaries": ["x"]},
        {"id": "c", "summaries": ["y"]},                     # a later line adds to the same paper
    ])
    s = L.load_summaries(p)
    assert s == {"a": ["one", "two"], "c": ["x", "y"]}
    err = capsys.readouterr().err
    assert "paper 'b'" in err and "skipped 1 papers" in err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "summaries": "not a list"}])
    with pytest.raises(L.DataError, match=r"bad.jsonl:1: field 'summaries' must be list"):
        L.load_summaries(bad)


def test_pairs_are_every_pair_of_different_summaries():
    pairs = L.make_pairs({"a": 3, "b": 4}, random.Random(0))
    assert Counter(p[0] for p in pairs) == {"a": 3, "b": 6}
    assert all(p[1] != p[2] for p in pairs)
    assert {frozenset(p[1:]) for p in pairs if p[0] == "a"} == {frozenset({0, 1}), frozenset({0, 2}), frozenset({1, 2})}
    assert len({p[1] < p[2] for p in pairs}) == 2  # both orientations occur


def test_summaries_of_one_paper_on_several_lines_merge_in_file_order(tmp_path, capsys):
    p = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "summaries": ["one", "two"]}, {"id": "b", "summaries": ["x", "y"]},
                                           {"id": "a", "summaries": ["two", " three "]}, {"id": "c", "summaries": ["z"]},
                                           {"id": "d", "summaries": ["w", "w", ""]}])
    assert L.load_summaries(p) == {"a": ["one", "two", "three"], "b": ["x", "y"]}  # distinct, stripped
    err = capsys.readouterr().err
    assert "paper 'c' has 1 distinct summaries, needs 2; skipped" in err and "skipped 2 papers" in err
    with open(p, "a") as f:
        f.write('{"id": "e", "summaries": ["u", 3]}\n')
    with pytest.raises(L.DataError, match=r"s.jsonl:6: field 'summaries' must be a list of strings"):
        L.load_summaries(p)


@pytest.mark.parametrize("seed", range(5))
def test_sampler_never_puts_one_paper_twice_in_a_batch(seed):
    rng = random.Random(seed)
    ids = [f"p{rng.randrange(30)}" for _ in range(400)]  # heavy repetition: ~13 pairs a paper
    batches = L.batches_without_duplicates(ids, batch_size=16)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))                          # nothing twice
    for b in batches:
        assert 2 <= len(b) <= 16
        assert len({ids[i] for i in b}) == len(b)               # no paper twice in a batch
    assert len(ids) - len(used) <= Counter(ids).most_common(1)[0][1]  # only a tail of one paper dropped


def test_split_validation_is_disjoint_and_seeded():
    s = {f"p{i}": ["a", "b"] for i in range(20)}
    train, val = L.split_validation(s, 5, seed=1)
    assert len(val) == 5 and not set(train) & set(val) and set(train) | set(val) == set(s)
    assert L.split_validation(s, 5, seed=1)[1] == val and L.split_validation(s, 5, seed=2)[1] != val
    with pytest.raises(L.DataError, match="validation_size"):
        L.split_validation(s, 19, seed=1)


def test_default_data_is_built_from_aclsum_without_overlap(tmp_path):
    paths = L.ensure_default_data(str(tmp_path))
    train = L.load_corpus(paths["train_corpus"])
    bench = L.load_corpus(paths["benchmark_corpus"])
    summaries = L.load_summaries(paths["train_summaries"])
    assert (len(train), len(bench), len(summaries)) == (150, 100, 150)
    assert not {p["id"] for p in train} & {p["id"] for p in bench}
    assert set(summaries) == {p["id"] for p in train}
    assert all(len(s) == 3 for s in summaries.values())
    assert " ." not in bench[0]["abstract"] and " ," not in bench[0]["abstract"]  # detokenized


def _norm_title(title: str) -> str:
    return re.sub(r"[^a-z0-9]", "", title.lower())


def test_no_training_paper_is_in_a_benchmark_or_validation_corpus(tmp_path):
    # The default training data against every corpus that scores or selects a model: the shipped arXiv
    # benchmark and validation files, ACLSum's test papers, and the development sets of ../shared/data
    # where they exist (not on a user's machine). By id and by normalized title.
    train = [json.loads(x) for x in open(os.path.join(ROOT, settings.train_summaries_file), encoding="utf-8")]
    assert len(train) == 4944 and all(len(r["summaries"]) == 4 for r in train)
    assert settings.train_summaries_file == "data/arxiv_llm_summaries.jsonl"
    ids, titles = {r["id"] for r in train}, {_norm_title(r["title"]) for r in train}
    assert len(ids) == len(titles) == 4944
    corpora = [os.path.join(ROOT, "data", n) for n in ("arxiv_benchmark.jsonl", "arxiv_val.jsonl")]
    corpora.append(L.ensure_default_data(str(tmp_path))["benchmark_corpus"])
    corpora += [p for p in (os.path.join(ROOT, "..", "shared", "data", n)
                            for n in ("sci_abstracts_dev.jsonl", "medical_abstracts.jsonl")) if os.path.exists(p)]
    for path in corpora:
        papers = L.load_corpus(path)
        assert not ids & {p["id"] for p in papers}, path
        assert not titles & {_norm_title(p["title"]) for p in papers}, path
    # and the arXiv part is exactly the papers of data/arxiv_train.jsonl, the file the generators summarize
    arxiv_train = L.load_corpus(os.path.join(ROOT, "data", "arxiv_train.jsonl"))
    assert {p["id"] for p in arxiv_train} == {r["id"] for r in train if r["part"] == "arxiv_train"}
