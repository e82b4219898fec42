"""The semantic benchmark: metrics on hand-made embeddings, the half-split rule, skips, resume, encoding."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import load_data as L
import semantic_benchmark as sb
import settings
from conftest import write_jsonl
from semcse import benchmark as H
from semcse import benchmark_tasks as tasks
from semcse.model import partner_ranks


def cfg_for(tmp_path, **overrides) -> dict:
    return settings.resolved(**{"output_dir": str(tmp_path / "out"), "embedding_cache_dir": str(tmp_path / "cache"),
                                "queries_file": "", **overrides})  # by default no Query task


TOPICS = ["graph parsing", "speech recognition", "image segmentation", "machine translation"]


def small_corpus(tmp_path, labels: bool = True, n: int = 12) -> str:
    recs = []
    for i in range(n):
        t = TOPICS[i % 4]
        rec = {"id": f"p{i}", "title": f"Study {i} of {t} with token{i}",
               "abstract": f"We study {t} using method token{i}. It works on {t} data. "
                           f"Results on {t} improve by {i} points. Code token{i} is released."}
        if labels:
            rec["label"] = t.split()[0]
        recs.append(rec)
    return write_jsonl(tmp_path / ("corpus.jsonl" if labels else "corpus_nolabel.jsonl"), recs)


class Fixed:
    """An embedder returning a given vector per text (tests the scoring without any model)."""

    def __init__(self, table: dict[str, np.ndarray], name: str = "fixed", role: str = ""):
        self.table, self.name, self.role, self.sep = table, name, role, " "
        self.params, self.path, self.metric = None, "", "euclidean"
        self.scoring = {"pooling": "fixed", "similarity": "euclidean", "normalized": False, "max_length": None}
        self.key, self.calls = {"fixed": name}, 0

    def embed(self, texts):
        self.calls += 1
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Metrics with known answers


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_perfect_model_ranks_one_and_reversed_model_ranks_last(metric):
    q = np.eye(8, dtype=np.float32)
    perfect = tasks.rank_metrics(partner_ranks(q, q.copy(), metric=metric), 8)
    assert perfect["mean_rank"] == 1 and perfect["median_rank"] == 1 and perfect["mrr"] == 1
    # c_i = -q_i is the farthest candidate from q_i under both metrics: rank n for everyone.
    reversed_ = tasks.rank_metrics(partner_ranks(q, -q, metric=metric), 8)
    assert reversed_["mean_rank"] == 8 and reversed_["mrr"] == pytest.approx(1 / 8)
    # A constant model ties everything: chance level (n + 1) / 2.
    const = partner_ranks(np.ones((8, 3)), np.ones((8, 3)), metric=metric)
    assert np.allclose(const, 4.5) and perfect["chance_rank"] == 4.5


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_and_v_measure_perfect_and_chance(metric):
    rng = np.random.default_rng(0)
    labels = [c for c in "abc" for _ in range(6)]
    x = np.eye(3)[[ord(c) - ord("a") for c in labels]] * 10 + rng.normal(0, 0.01, (18, 3))
    micro, macro = tasks.knn_agreement(x, labels, k=5, metric=metric, block=4)  # block < n: tests blocking too
    assert micro == 1.0 and macro == 1.0
    assert tasks.kmeans_v_measure(x, labels, metric, seed=0) == pytest.approx(1.0)
    # Six tight groups, each holding one paper of every label: the 2 nearest neighbours never agree.
    mixed = np.eye(6)[np.arange(18) % 6] * 10 + rng.normal(0, 0.01, (18, 6))
    micro, macro = tasks.knn_agreement(mixed, labels, k=2, metric=metric)
    assert micro == 0.0 and macro == 0.0
    assert tasks.chance_agreement(labels) == pytest.approx(3 * 6 * 5 / (18 * 17))


def test_perf_formula():
    def res(ranks, knn, role=""):
        return {"role": role, "tasks": {"title_abstract": {"mean_rank": ranks, "chance_rank": 50.5},
                                        "clustering": {"knn_agreement": knn, "chance": 0.2}}}
    run = {"base": res(9.0, 0.4, "base"), "best": res(1.0, 0.8), "mid": res(5.0, 0.6), "bad": res(80.0, 0.1)}
    perf = tasks.perf_scores(run, "base")
    assert perf["base"][0] == 0.0 and perf["best"][0] == pytest.approx(1.0)
    assert perf["mid"][1]["title_abstract"] == pytest.approx(0.5)  # halfway on the linear rank scale
    assert perf["mid"][1]["clustering"] == pytest.approx(0.5)
    assert perf["mid"][0] == pytest.approx(0.5)
    assert perf["bad"][1] == {"title_abstract": -1.0, "clustering": pytest.approx(-0.75)}  # worse than the reference: below 0
    assert perf["bad"][0] == pytest.approx(-0.875)  # (-71/8 clipped to -1, and -0.3/0.4), averaged
    worse = {"base": res(2.0, 0.5, "base"), "a": res(3.0, 0.45), "b": res(4.0, 0.3)}  # nobody beats the base
    assert tasks.perf_scores(worse, "base")["b"][0] == -1.0 and tasks.perf_scores(worse, "base")["a"][1] == \
        {"title_abstract": -0.5, "clustering": pytest.approx(-0.25)}
    assert tasks.perf_scores(worse, "base")["base"][0] == 0.0
    assert tasks.perf_scores(run, "mid")["base"][0] == pytest.approx(-1.0) and tasks.perf_scores(run, "mid")["best"][0] == 1.0  # by name
    assert all(p == (None, {}) for p in tasks.perf_scores(run, "no-such-model").values())  # no reference: no Perf.


# ----------------------------------------------------------------------------------------------
# The half-split rule


def test_split_halves_rule():
    assert L.split_halves("Only one sentence here, e.g. This is not a second one.") is None
    # Cut after 1 sentence: |2*12 - 64| = 40 beats cutting after 2: |2*53 - 64| = 42.
    assert L.split_halves("A short one. Then a much longer sentence follows here. And an end.") == \
        ("A short one.", "Then a much longer sentence follows here. And an end.")
    # Balanced by characters, earlier boundary on a tie; abbreviations and "et al." do not split.
    assert L.split_halves("Aaaa. Bbbb. Cccc. Dddd.") == ("Aaaa. Bbbb.", "Cccc. Dddd.")
    assert L.split_sentences("Smith et al. Showed this. We use Fig. 2 here!") == \
        ["Smith et al. Showed this.", "We use Fig. 2 here!"]
    # A lower-case word or a decimal after a dot is no boundary; LaTeX or a digit after a space is.
    assert L.split_sentences("We got 3.5 units. and more. $x$ is big. 42 is the answer.") == \
        ["We got 3.5 units. and more.", "$x$ is big.", "42 is the answer."]


# ----------------------------------------------------------------------------------------------
# Whole runs: skips, resume


def lexical_run(tmp_path, corpus, queries=None, overwrite=False, embedders=None, **overrides):
    cfg = cfg_for(tmp_path, **overrides)
    embs = embedders or [H.TfidfEmbedder(L.load_corpus(corpus), cfg)]
    return H.run_benchmark(embs, cfg, corpus, queries, overwrite)


def test_skip_without_labels_and_queries(tmp_path, capsys):
    corpus = small_corpus(tmp_path, labels=False)
    r = lexical_run(tmp_path, corpus)["TF-IDF (lexical)"]
    assert set(r["tasks"]) == {"title_abstract", "abstract_segments"}
    assert "no topic labels" in r["skipped"]["clustering"] and "no queries file" in r["skipped"]["query"]
    out = capsys.readouterr().out
    assert "query: skipped: no queries file" in out and "| TF-IDF (lexical) |" in out
    assert r["tasks"]["title_abstract"]["mean_rank"] == 1.0  # each title shares a unique word with its abstract
    assert r["tasks"]["abstract_segments"]["n"] == 12 and r["tasks"]["abstract_segments"]["skipped_unsplittable"] == 0


def test_all_tasks_with_labels_and_queries(tmp_path):
    corpus = small_corpus(tmp_path)
    recs = [{"id": f"p{i}", "query": f"token{i} for {TOPICS[i % 4]}", "model": "test"} for i in range(12)]
    queries = write_jsonl(tmp_path / "q.jsonl", recs + [{"id": "elsewhere", "query": "a paper not in the corpus"}])
    r = lexical_run(tmp_path, corpus, queries, knn_k=2, perf_reference="lexical")["TF-IDF (lexical)"]
    assert r["tasks"]["query"]["mean_rank"] == 1.0 and r["tasks"]["query"]["n"] == 12
    c = r["tasks"]["clustering"]
    assert c["k"] == 2 and c["n_labels"] == 4 and 0 <= c["knn_agreement"] <= 1 and 0 <= c["v_measure"] <= 1
    assert r["perf"] == 0.0  # its own reference: Perf. 0 on every task
    out_dir = tmp_path / "out" / "benchmark" / "corpus"
    table = (out_dir / "results.md").read_text()
    assert "| TF-IDF (lexical) | tf-idf, cosine, normalized |" in table and "Perf. = 0 at TF-IDF" in table
    saved = json.loads((out_dir / "TF-IDF_lexical.json").read_text())
    assert saved["corpus_sha256"] and saved["versions"]["numpy"] and saved["tasks"]["query"]["seconds"] >= 0
    assert saved["perf"] == 0.0 and saved["perf_reference"] == "lexical"
    r = lexical_run(tmp_path, corpus, queries, knn_k=2)["TF-IDF (lexical)"]  # default reference: "base", absent
    assert r["perf"] is None and "Perf. left empty" in (out_dir / "results.md").read_text()


def test_resume_keeps_scored_tasks_and_overwrite_redoes_them(tmp_path):
    corpus = small_corpus(tmp_path)
    papers = L.load_corpus(corpus)
    rng = np.random.default_rng(0)
    texts = [p["title"] for p in papers] + [p["abstract"] for p in papers] + [tasks.paper_text(p, " ") for p in papers]
    texts += [h for p in papers for h in L.split_halves(p["abstract"])]
    table = {t: rng.normal(size=4) for t in texts}

    class Crashing(Fixed):  # dies on its third embed() call, i.e. inside the second task
        def embed(self, texts):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().embed(texts)

    with pytest.raises(KeyboardInterrupt):
        lexical_run(tmp_path, corpus, embedders=[Crashing(table)])
    path = tmp_path / "out" / "benchmark" / "corpus" / "fixed.json"
    saved = json.loads(path.read_text())
    assert list(saved["tasks"]) == ["title_abstract"]  # written after the first task
    saved["tasks"]["title_abstract"]["mean_rank"] = 11.75  # a marker (a possible rank of 12): resume must keep it
    path.write_text(json.dumps(saved))

    emb = Fixed(table)
    r = lexical_run(tmp_path, corpus, embedders=[emb])["fixed"]
    assert r["tasks"]["title_abstract"]["mean_rank"] == 11.75
    assert set(r["tasks"]) == {"title_abstract", "abstract_segments", "clustering"}
    assert emb.calls == 3  # two halves + papers; title-abstract was not recomputed

    r = lexical_run(tmp_path, corpus, overwrite=True, embedders=[Fixed(table)])["fixed"]
    assert r["tasks"]["title_abstract"]["mean_rank"] != 11.75


# ----------------------------------------------------------------------------------------------
# Real encoders: the same vectors as sentence-transformers; the paper's entry point


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embeddings_equal_sentence_transformers(tmp_path, tiny_model_dir, pooling):
    from sentence_transformers import SentenceTransformer

    from semcse.model import load_model, save_model

    m, _ = load_model(tiny_model_dir, "cpu", pooling=pooling)
    saved = save_model(m, str(tmp_path / "st"))
    cfg = cfg_for(tmp_path, precision="fp32", device="cpu")
    texts = ["a short text", "a somewhat longer text about graph parsing and more words " * 3, "x"]
    m2, tok2 = load_model(saved, "cpu")
    emb = H.ModelEmbedder("tiny", m2, tok2, cfg)
    assert (emb.metric, emb.scoring["pooling"], emb.max_length) == ("euclidean", pooling, 128)
    ours = emb.embed(texts)
    theirs = SentenceTransformer(saved, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    cached = os.listdir(cfg.embedding_cache_dir)
    assert len(cached) == 1 and np.array_equal(emb.embed(texts), ours)  # second call from the cache
    assert len(os.listdir(cfg.embedding_cache_dir)) == 1


def test_a_dense_and_normalize_folder_embeds_as_sentence_transformers(tmp_path):
    """Referee: a folder Transformer -> Pooling -> Dense 384->128 -> Normalize gives, through our encode(),
    the vectors and shape of SentenceTransformer.encode() (fp32)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from semcse.model import encode, load_model

    shipped = SentenceTransformer(settings.packaged_minilm(), device="cpu")
    torch.manual_seed(0)
    folder = str(tmp_path / "dense")
    SentenceTransformer(modules=[shipped[0], shipped[1], Dense(384, 128), Normalize()], device="cpu").save(folder)
    texts = ["Graph neural networks for parsing.", "A short one.", "Dark matter in galaxy clusters " * 40]
    theirs = SentenceTransformer(folder, device="cpu").encode(texts, convert_to_numpy=True)
    m, tok = load_model(folder, "cpu")
    ours = encode(m, tok, texts, batch_size=2, precision="fp32")
    assert ours.shape == theirs.shape == (3, 128)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_title_abstract_equals_sentence_transformers_information_retrieval_evaluator(tmp_path):
    """Referee: titles as queries, abstracts as corpus; the packaged all-MiniLM-L6-v2 as shipped
    (mean pooling, normalized, cosine, 256 tokens): same MRR@10 and accuracy@1 as ours."""
    from conftest import SHARED_DATA
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from semcse.model import load_model

    corpus = L.load_corpus(SHARED_DATA)[:80] if os.path.exists(SHARED_DATA) else \
        L.load_corpus(small_corpus(tmp_path, n=40))
    m, tok = load_model(settings.packaged_minilm(), "cpu")
    ir = InformationRetrievalEvaluator({p["id"]: p["title"] for p in corpus}, {p["id"]: p["abstract"] for p in corpus},
                                       {p["id"]: {p["id"]} for p in corpus}, mrr_at_k=[10], accuracy_at_k=[1],
                                       write_csv=False)(m)
    theirs = {k.rsplit("_", 1)[-1]: v for k, v in ir.items() if k.endswith(("mrr@10", "accuracy@1"))}
    emb = H.ModelEmbedder("minilm", m, tok, cfg_for(tmp_path, precision="fp32", device="cpu"))
    ours = tasks.task_title_abstract(emb.embed, corpus, emb.metric)
    assert theirs["mrr@10"] == pytest.approx(ours["mrr_at_10"], abs=1e-9)
    assert theirs["accuracy@1"] == pytest.approx(ours["accuracy_at_1"], abs=1e-9)


def test_the_cache_never_keeps_a_bad_encode_and_overwrite_encodes_again(tmp_path, tiny_model_dir, monkeypatch):
    from semcse.model import load_model

    m, tok = load_model(tiny_model_dir, "cpu")
    cfg = cfg_for(tmp_path, precision="fp32", device="cpu")
    texts = ["one text", "another text"]
    good = H.ModelEmbedder("tiny", m, tok, cfg).embed(texts)
    cache = tmp_path / "cache"
    (path,) = cache.glob("*.npy")
    for bad in (np.zeros((0, 32), np.float32), np.full((2, 32), np.nan, np.float32)):  # nothing encoded; NaN
        path.unlink(missing_ok=True)
        monkeypatch.setattr(H, "encode", lambda *a, bad=bad, **k: bad)
        with pytest.raises(H.ModelError, match="nothing cached"):
            H.ModelEmbedder("tiny", m, tok, cfg).embed(texts)
        assert not list(cache.glob("*.npy"))
    monkeypatch.undo()
    np.save(path, np.full((2, 32), np.inf, np.float32))  # a poisoned file: not used, replaced
    np.testing.assert_array_equal(H.ModelEmbedder("tiny", m, tok, cfg).embed(texts), good)
    np.save(path, np.zeros((2, 32), np.float32))  # a stale file of the right shape: --overwrite encodes again
    emb = H.ModelEmbedder("tiny", m, tok, cfg)
    emb.overwrite = True
    np.testing.assert_array_equal(emb.embed(texts), good)
    np.testing.assert_array_equal(np.load(path), good)
    # the batch size and the scoring are part of the key: another batch size, another entry
    H.ModelEmbedder("tiny", m, tok, cfg_for(tmp_path, precision="fp32", device="cpu", encode_batch_size=1)).embed(texts)
    assert len(list(cache.glob("*.npy"))) == 2


def test_a_damaged_or_non_object_results_file_is_named_and_scored_again(tmp_path, capsys):
    corpus = small_corpus(tmp_path)
    lexical_run(tmp_path, corpus)
    path = tmp_path / "out" / "benchmark" / "corpus" / "TF-IDF_lexical.json"
    for content, words in (("{not json", "damaged"), ("[1, 2]", "not a JSON object"), ('"text"', "not a JSON object")):
        path.write_text(content)
        capsys.readouterr()
        r = lexical_run(tmp_path, corpus)["TF-IDF (lexical)"]
        assert f"{path}: {words}" in capsys.readouterr().out
        assert r["tasks"]["title_abstract"]["mean_rank"] == 1.0 and json.loads(path.read_text())["tasks"]


def test_evaluate_model_semantics_entry_point(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from semcse.model import load_model

    corpus = small_corpus(tmp_path)
    monkeypatch.setattr(settings, "output_dir", str(tmp_path / "out"))
    monkeypatch.setattr(settings, "embedding_cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(settings, "queries_file", "")
    m, tok = load_model(tiny_model_dir, "cpu")
    r = sb.evaluate_model_semantics(m, tok, output_processing="last_hidden", metric="cosine", corpus_file=corpus)
    assert r["metric"] == "cosine" and r["scoring"]["pooling"] == "cls" and r["scoring"]["forced"]
    assert 1 <= r["tasks"]["title_abstract"]["mean_rank"] <= 12 and "clustering" in r["tasks"]
    out = capsys.readouterr().out
    assert "| Model | Scored as | Params |" in out and "cls, cosine (forced), not normalized, 128 tokens" in out
    assert (tmp_path / "out" / "benchmark" / "corpus-cosine" / "map.png").exists()
    r = sb.evaluate_model_semantics(m, tok, corpus_file=corpus)  # the model's own: Euclidean, its own folder
    assert r["metric"] == "euclidean" and (tmp_path / "out" / "benchmark" / "corpus" / "map.png").exists()
    with pytest.raises(ValueError, match="output_processing"):
        sb.evaluate_model_semantics(m, tok, output_processing="pooler")


def test_scoring_memory_is_bounded_by_the_setting(monkeypatch):
    """Rank and kNN scoring run in blocks of rows sized by score_memory_mb (Python memory, tracemalloc),
    with the same results as one [n, n] block."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    y = x + rng.normal(scale=0.8, size=x.shape).astype(np.float32)
    labels = [str(i % 7) for i in range(len(x))]
    whole = partner_ranks(x, y, metric="euclidean", block=len(x)), tasks.knn_agreement(x, labels, 5, "cosine", block=len(x))
    tracemalloc.start()
    try:  # score_memory_mb=2, passed as the harness passes the setting
        blocked = partner_ranks(x, y, metric="euclidean", memory_mb=2), tasks.knn_agreement(x, labels, 5, "cosine", memory_mb=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(whole[0], blocked[0]) and whole[1] == pytest.approx(blocked[1])
    assert peak < 4 * 2**20, peak  # one [2000, 2000] float64 block alone would take 30 MiB


def test_tfidf_stays_sparse_and_ranks_as_dense(tmp_path):
    corpus = L.load_corpus(small_corpus(tmp_path))
    lex = H.TfidfEmbedder(corpus)
    t, a = lex.embed([p["title"] for p in corpus]), lex.embed([p["abstract"] for p in corpus])
    assert hasattr(t, "tocsr") and t.shape[0] == len(corpus)
    for metric in ("euclidean", "cosine"):
        assert np.array_equal(partner_ranks(t, a, metric=metric), partner_ranks(t.toarray(), a.toarray(), metric=metric))


def test_a_corpus_of_one_paper_is_refused(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"id": "a", "title": "A title", "abstract": "One. Two."}])
    with pytest.raises(L.DataError, match=r"one.jsonl: 1 paper; .* needs at least 2"):
        lexical_run(tmp_path, one)


def test_one_sentence_abstracts_are_left_out_of_segments_and_counted(tmp_path):
    recs = [{"id": f"p{i}", "title": f"Title {i} w{i}", "abstract": f"Only one sentence about w{i}, e.g. This."
             if i % 2 else f"First sentence about w{i}. Second sentence about w{i}."} for i in range(6)]
    r = lexical_run(tmp_path, write_jsonl(tmp_path / "mixed.jsonl", recs))["TF-IDF (lexical)"]
    seg = r["tasks"]["abstract_segments"]
    assert (seg["n"], seg["n_candidates"], seg["skipped_unsplittable"]) == (3, 3, 3)
    one = write_jsonl(tmp_path / "one_sentence.jsonl", [rec for i, rec in enumerate(recs) if i % 2])
    r = lexical_run(tmp_path, one)["TF-IDF (lexical)"]
    assert "abstract_segments" not in r["tasks"]
    assert r["skipped"]["abstract_segments"] == "fewer than 2 of 3 abstracts have 2 sentences"


def test_baselines_score_the_base_encoder_like_the_trained_model(tmp_path, tiny_model_dir):
    """--baselines: the untrained base takes the trained model's pooling and similarity (Perf.'s zero is
    a like-for-like comparison); MiniLM is scored as shipped; an explicit --pooling reaches plain encoders only."""
    from semcse.model import load_model, save_model

    m, _ = load_model(tiny_model_dir, "cpu", pooling="mean", metric="cosine")
    save_model(m, str(tmp_path / "out" / "SemCSE" / "best"))
    corpus = small_corpus(tmp_path)
    cfg = cfg_for(tmp_path, encoder_checkpoint=tiny_model_dir, device="cpu")
    embs = {e.role: e for e in H.cli_embedders("", True, corpus, cfg)}
    assert set(embs) == {"base", "trained", "lexical", "baseline"}
    for role in ("base", "trained"):
        assert (embs[role].scoring["pooling"], embs[role].metric) == ("mean", "cosine")
    assert H.describe_scoring(embs["baseline"].scoring) == "mean, cosine, normalized, 256 tokens"
    cfg = cfg_for(tmp_path, pooling="cls", metric="euclidean", device="cpu")
    embs = list(H.cli_embedders(tiny_model_dir, True, corpus, cfg))  # the trained folder keeps its own pooling
    assert [(e.role, e.scoring["pooling"], e.metric) for e in embs if e.role in ("model", "trained")] == \
        [("model", "cls", "euclidean"), ("trained", "mean", "euclidean")]
    assert all(e.scoring["forced"] for e in embs)
