"""The benchmark's harness: embedders (with an embedding cache), resumable results files, the table,
the map and the command line. The science (tasks, metrics, Perf.) is in semantic_benchmark.py.

Outputs in output_dir/benchmark/<corpus name>/ (…-<metric> when --metric forces one): <model>.json
(rewritten after each task; a rerun keeps tasks already scored with the same weights, scoring, data
and settings unless --overwrite), results.md, map.png (t-SNE coloured by label). Embeddings are
cached in embedding_cache_dir, keyed by a hash of the weights, every module's configuration, the
scoring (pooling, similarity, normalization, max length), precision, device type, batch size and
the texts; --overwrite encodes again.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from typing import Iterable, Iterator

import numpy as np
import torch

import cli
import files
import settings
from settings import Config
from load_data import DataError, ensure_default_data, load_corpus
from model import (ModelError, default_max_length, encode, for_scoring, load_model, saved_scoring, scoring_of,
                   set_pooling, short_name)
from semantic_benchmark import (COLUMNS, TASKS, load_queries, paper_text, perf_scores, task_abstract_segments,
                                task_clustering, task_query, task_sts_b, task_title_abstract)

ACLSUM_CORPUS = os.path.join("data", "benchmark_corpus.jsonl")  # built by load_data.ensure_default_data


def run_benchmark(embedders: Iterable, cfg: Config, corpus_file: str | None = None, queries_file: str | None = None,
                  overwrite: bool = False, sts: bool = False) -> dict[str, dict]:
    """Score each embedder (taken one at a time, so models can be loaded lazily), then Perf., table, map."""
    corpus_file = corpus_file or cfg.benchmark_corpus_file
    if not os.path.exists(corpus_file) and os.path.normpath(corpus_file) == ACLSUM_CORPUS:
        ensure_default_data(cfg.data_dir)
    queries_file = queries_file or cfg.queries_file
    cfg = cfg.replace(queries_file=queries_file)  # the file actually used, in messages and results
    corpus = load_corpus(corpus_file)
    if len(corpus) < 2:
        raise DataError(f"{corpus_file}: 1 paper; the benchmark ranks each paper's partner among all papers "
                        f"and needs at least 2")
    queries = load_queries(queries_file, {p["id"] for p in corpus}) if os.path.exists(queries_file) else None
    forced = cfg.metric != "auto"
    out_dir = os.path.join(cfg.output_dir, "benchmark", os.path.splitext(os.path.basename(corpus_file))[0]
                           + (f"-{cfg.metric}" if forced else ""))
    os.makedirs(out_dir, exist_ok=True)
    data = {"corpus_file": corpus_file, "corpus_sha256": _file_hash(corpus_file), "n_papers": len(corpus),
            "queries_file": queries_file, "queries_sha256": _file_hash(queries_file) if queries else None}
    print(f"benchmark: {len(corpus)} papers from {corpus_file}, similarity "
          f"{'forced to ' + cfg.metric if forced else 'each model’s own'}; results in {out_dir}")
    results, maps = {}, {}
    for emb in embedders:
        emb.overwrite = overwrite  # --overwrite encodes again too, never trusting cached embeddings
        results[emb.name] = score_model(emb, corpus, queries, data, cfg, out_dir, overwrite, sts)
        if emb.role in ("trained", "base") and any(p["label"] for p in corpus):
            maps[emb.name] = (emb.embed([paper_text(p, emb.sep) for p in corpus]), emb.metric)
    perf = perf_scores(results, cfg.perf_reference)
    for name, r in results.items():  # Perf. depends on the run's models: stored as "of this run"
        r["perf"], r["perf_per_task"] = perf[name]
        r["perf_run_models"], r["perf_reference"] = list(results), cfg.perf_reference
        files.write_json_atomic(r["results_file"], r, indent=1, ensure_ascii=False)
    table = results_table(results, cfg, data)
    print("\n" + table)
    with files.atomic_write(os.path.join(out_dir, "results.md")) as f:
        f.write(table + "\n")
    if maps:
        draw_map(maps, [p["label"] for p in corpus], os.path.join(out_dir, "map.png"), cfg.seed)
    return results


# ----------------------------------------------------------------------------------------------
# Embedders: name, role, sep, params, path, metric, scoring, key and embed(texts) -> [n, dim]


class ModelEmbedder:
    """A sentence-transformers model behind model.encode(), ranked with its own similarity (or the
    run's forced metric). Embeddings are cached on disk; a cache entry is used only if it has the
    right shape and finite values, and only finite encodes of the right shape are written."""

    def __init__(self, name: str, model, tokenizer, cfg: Config, role: str = "", path: str = ""):
        self.name, self.model, self.tokenizer, self.cfg, self.role = name, model, tokenizer, cfg, role
        self.path, self.sep = path or getattr(model, "name_or_path", ""), tokenizer.sep_token or " "
        self.params = sum(p.numel() for p in model.parameters())
        self.max_length = cfg.benchmark_max_length or default_max_length(model)
        forced = cfg.metric != "auto"
        self.metric = cfg.metric if forced else model.similarity_fn_name
        self.scoring = {**scoring_of(model, self.max_length), "similarity": self.metric, "forced": forced}
        self.overwrite, self._fresh = False, set()
        # Identity = the weights themselves (a hash of every tensor's bytes, ~0.2 s per 100M params)
        # plus every module's configuration, so a retrained or re-pooled model never reuses stale
        # embeddings or results.
        h = hashlib.sha256(f"{type(tokenizer).__name__}|{len(tokenizer)}".encode())
        for k, t in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        modules = [(type(m).__name__, m.get_config_dict() if hasattr(m, "get_config_dict") else {}) for m in model]
        self.key = {"fingerprint": h.hexdigest(), "modules": json.loads(json.dumps(modules, default=str)),
                    "scoring": self.scoring, "precision": cfg.precision, "encode_batch_size": cfg.encode_batch_size,
                    "device": next(model.parameters()).device.type}

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, from the cache or encode()."""
        cache, dim = self.cfg.embedding_cache_dir, self.scoring["dim"]
        key = hashlib.sha256(json.dumps([self.key, texts], sort_keys=True).encode()).hexdigest()[:32]
        path = os.path.join(cache, f"{key}.npy") if cache else ""
        if path and not (self.overwrite and key not in self._fresh):
            arr = _read_embeddings(path, (len(texts), dim))
            if arr is not None:
                return arr
        arr = encode(self.model, self.tokenizer, texts, self.cfg.encode_batch_size, self.max_length,
                     self.cfg.precision)
        if arr.shape != (len(texts), dim) or not np.isfinite(arr).all():
            raise ModelError(f"{self.path}: encoding gave {arr.shape} vectors with non-finite values or the wrong "
                             f"shape (want {(len(texts), dim)}); nothing cached (try --precision=fp32)")
        if path:
            with files.atomic_write(path, "wb") as f:
                np.save(f, arr)
            self._fresh.add(key)
        return arr


class TfidfEmbedder:
    """TF-IDF baseline: IDF fitted on the corpus' papers (title + abstract), sublinear tf, L2-normalized
    rows, so Euclidean and cosine rank identically. Sparse [n, vocab] matrices: memory follows the
    words in the texts, not n x vocab."""

    def __init__(self, corpus: list[dict], cfg: Config | None = None, name: str = "TF-IDF (lexical)"):
        from sklearn.feature_extraction.text import TfidfVectorizer

        forced = cfg is not None and cfg.metric != "auto"
        self.name, self.role, self.sep, self.params, self.path = name, "lexical", " ", None, ""
        self.metric = cfg.metric if forced else "cosine"
        self.scoring = {"pooling": "tf-idf", "similarity": self.metric, "normalized": True, "max_length": None,
                        "forced": forced}
        self.vectorizer = TfidfVectorizer(sublinear_tf=True).fit([paper_text(p, " ") for p in corpus])
        self.key = {"lexical": "tfidf", "sublinear_tf": True, "vocab": len(self.vectorizer.vocabulary_)}

    def embed(self, texts: list[str]):
        return self.vectorizer.transform(texts).astype(np.float32).tocsr()


def _read_embeddings(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    """A cached array if it is whole, of `shape` and finite; None (recompute) for anything else."""
    try:
        arr = np.load(path) if os.path.exists(path) else None
    except (OSError, ValueError):  # a damaged cache file is recomputed and replaced
        return None
    if arr is None or arr.shape != shape or not np.isfinite(arr).all():
        return None
    return arr


# ----------------------------------------------------------------------------------------------
# Scoring one model (resumable)


def score_model(emb, corpus: list[dict], queries: list[dict] | None, data: dict, cfg: Config, out_dir: str,
                overwrite: bool, sts: bool = False) -> dict:
    """Run the four tasks (and STS-B if `sts`) for one embedder; the JSON is rewritten after each task."""
    path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9._-]+", "_", emb.name).strip("_") + ".json")
    key = {**emb.key, "metric": emb.metric, "knn_k": cfg.knn_k, "seed": cfg.seed,
           "corpus_sha256": data["corpus_sha256"]}
    result = {} if overwrite else _read_results(path)
    if result and result.get("key") != key:
        print(f"{path}: model, data or settings changed since it was written; scoring again")
        result = {}
    result.update(model=emb.name, results_file=path, role=emb.role, path=emb.path, params=emb.params,
                  scoring=emb.scoring, key=key, metric=emb.metric, **data, versions=_versions(),
                  settings=settings.public_settings(cfg))
    if not isinstance(result.get("tasks"), dict):
        result["tasks"] = {}
    result["skipped"] = {}
    print(f"\n== {emb.name} (scored as {describe_scoring(emb.scoring)})")
    for task in TASKS + (("sts_b",) if sts else ()):
        done = result["tasks"].get(task)
        if done and not overwrite and (task != "query" or done.get("queries_sha256") == data["queries_sha256"]):
            print(f"  {task}: already scored in {path}, kept (--overwrite to redo)")
            continue
        result["tasks"].pop(task, None)
        started = time.time()
        scored = run_task(task, emb, corpus, queries, cfg)
        if isinstance(scored, str):  # a reason to skip
            result["skipped"][task] = scored
            print(f"  {task}: skipped: {scored}")
            continue
        scored["seconds"] = round(time.time() - started, 2)
        if task == "query":
            scored["queries_sha256"] = data["queries_sha256"]
        result["tasks"][task] = scored
        files.write_json_atomic(path, result, indent=1, ensure_ascii=False)
        print(f"  {task}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in scored.items() if k != "queries_sha256"))
    files.write_json_atomic(path, result, indent=1, ensure_ascii=False)
    return result


def run_task(task: str, emb, corpus: list[dict], queries: list[dict] | None, cfg: Config) -> dict | str:
    """One task for one embedder: its results, or a reason why it was skipped."""
    mb = cfg.score_memory_mb
    if task == "title_abstract":
        return task_title_abstract(emb.embed, corpus, emb.metric, mb)
    if task == "abstract_segments":
        return task_abstract_segments(emb.embed, corpus, emb.metric, mb)
    if task == "query":
        return task_query(emb.embed, corpus, queries, emb.metric, emb.sep, cfg.queries_file, mb)
    if task == "clustering":
        return task_clustering(emb.embed, corpus, emb.metric, cfg.knn_k, cfg.seed, emb.sep, mb)
    return task_sts_b(emb.embed)


def _read_results(path: str) -> dict:
    """A results file of an earlier run, or {} (none, or damaged: named, and scored again)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        print(f"{path}: damaged ({type(e).__name__}); scoring again")
        return {}
    if not isinstance(result, dict):
        print(f"{path}: not a JSON object ({type(result).__name__}); scoring again")
        return {}
    return result


# ----------------------------------------------------------------------------------------------
# Table and map


def describe_scoring(s: dict) -> str:
    """'mean, cosine, normalized, 256 tokens' (+ ' (forced)' when --metric overrode the model's own)."""
    parts = [s["pooling"], s["similarity"] + (" (forced)" if s.get("forced") else ""),
             "normalized" if s["normalized"] else "not normalized"]
    return ", ".join(parts + ([f"{s['max_length']} tokens"] if s.get("max_length") else []))


def results_table(results: dict[str, dict], cfg: Config, data: dict) -> str:
    """Markdown like the paper's table (mean ranks, kNN agreement, Perf.) with how each model was
    scored, then the details."""
    def cell(r: dict, task: str, key: str, fmt: str) -> str:
        t = r["tasks"].get(task)
        return format(t[key], fmt) if t else "–"

    counts = {t: v for t, v in next((r["tasks"] for r in results.values() if r["tasks"]), {}).items() if t in TASKS}
    has_sts = any("sts_b" in r["tasks"] for r in results.values())
    head = ", ".join(f"{COLUMNS[t]} {v['n']} of {v['n_candidates']}" if "n" in v
                     else f"{COLUMNS[t]} {v['n_labelled']} papers, {v['n_labels']} labels, k={v['k']}"
                     for t, v in counts.items())
    metric = (f"similarity forced to {cfg.metric} for every model (an ablation)" if cfg.metric != "auto"
              else "each model scored with its own pooling and similarity")
    ref = next((m for m, r in results.items() if cfg.perf_reference in (m, r.get("role"))), None)
    perf = (f"Perf. = 0 at {ref}, 1 at the best model of this run, linear, averaged over the tasks; not comparable "
            f"across corpora or with the paper" if ref else
            f"Perf. left empty: the reference model (perf_reference={cfg.perf_reference}) is not in this run")
    lines = [f"Corpus {data['corpus_file']} ({data['n_papers']} papers; {head}); {metric}. "
             f"Mean rank of the true partner (1 = perfect, lower is better); Clustering = kNN label agreement. "
             f"{perf}.", "",
             "| Model | Scored as | Params | " + " | ".join(COLUMNS[t] for t in TASKS) + " | Perf. |"
             + (" STS-B |" if has_sts else ""), "|---" * (9 if has_sts else 8) + "|"]
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "–"
        cells = [cell(r, t, "mean_rank", ".2f") for t in TASKS[:3]] + [cell(r, "clustering", "knn_agreement", ".3f")]
        p = "–" if r.get("perf") is None else f"{r['perf']:.3f}"
        sts = f" {cell(r, 'sts_b', 'spearman', '.2f')} |" if has_sts else ""
        lines.append(f"| {name} | {describe_scoring(r['scoring'])} | {params} | " + " | ".join(cells) + f" | {p} |" + sts)
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


def draw_map(embeddings: dict[str, tuple[np.ndarray, str]], labels: list, path: str, seed: int) -> None:
    """t-SNE of each model's paper embeddings ([n, dim], with its metric), side by side, coloured by label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keep = [i for i, y in enumerate(labels) if y is not None]
    names = sorted(set(labels[i] for i in keep))
    colour = {y: plt.cm.tab10(i % 10) if len(names) <= 10 else plt.cm.tab20(i % 20) for i, y in enumerate(names)}
    fig, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 6), squeeze=False)
    for ax, (name, (x, metric)) in zip(axes[0], embeddings.items()):
        xy = TSNE(2, perplexity=min(30.0, (len(keep) - 1) / 3), init="pca", random_state=seed,
                  metric="cosine" if metric == "cosine" else "euclidean").fit_transform(x[keep])
        for y in names:
            sel = [j for j, i in enumerate(keep) if labels[i] == y]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour[y], label=y)
        ax.set(title=name, xticks=[], yticks=[])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    with files.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    print(f"map of the embedding space: {path}")


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{p: metadata.version(p) for p in (
        "numpy", "torch", "transformers", "sentence-transformers", "scikit-learn")}}


# ----------------------------------------------------------------------------------------------
# Command line


def cli_embedders(model: str, baselines: bool, corpus_file: str, cfg: Config) -> Iterator:
    """The run's models, loaded one at a time: --model, and with --baselines the untrained base encoder
    (scored like the trained model), the trained model, TF-IDF, the packaged all-MiniLM-L6-v2 as shipped
    and the setting baseline_models ("name_or_path[:pooling]", the pooling for plain encoders)."""
    specs = [(model, cfg.pooling, "model")] if model else []
    trained = os.path.join(cfg.output_dir, cfg.save_name, "best")
    if baselines:
        specs.append((cfg.encoder_checkpoint, cfg.pooling, "base"))
        if os.path.isdir(trained):
            specs.append((trained, "auto", "trained"))
        else:
            print(f"note: no trained model at {trained} (run python train_embedding_model.py); skipped")
        specs += [("lexical", "", "lexical"), (settings.packaged_minilm(), "auto", "baseline")]
        for item in filter(None, (s.strip() for s in cfg.baseline_models.split(","))):
            path, _, pool = item.rpartition(":") if item.endswith((":cls", ":mean")) else (item, "", cfg.pooling)
            specs.append((path, pool, "baseline"))
    seen = set()
    for path, pooling, role in specs:
        if path in seen:
            continue
        seen.add(path)
        if role == "lexical":
            yield TfidfEmbedder(load_corpus(corpus_file), cfg)
            continue
        try:
            m, tok = load_for_scoring(path, pooling, role, trained, cfg)
        except ModelError as e:
            if role == "model":
                raise
            print(f"skipped baseline: {e}")
            continue
        suffix = {"base": " (untrained base)", "trained": " (trained)"}.get(role, "")
        yield ModelEmbedder(f"{short_name(path)}{suffix}", m, tok, cfg, role=role, path=path)


def load_for_scoring(path: str, pooling: str, role: str, trained: str, cfg: Config):
    """load_model for the benchmark, weights cast for scoring (model.for_scoring): the base encoder takes
    the trained model's pooling and similarity (so both are scored alike); an explicit --pooling applies
    to plain encoders only."""
    if role == "base" and os.path.isdir(trained):
        own = saved_scoring(trained, cfg.offline)  # pooling, similarity and normalization of the trained model
        m, tok = load_model(path, cfg.device, pooling=own["pooling"], metric=own["metric"],
                            normalize=own["normalized"], offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
    else:
        m, tok = load_model(path, cfg.device, offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
        if pooling not in ("auto", "") and m.plain_encoder:
            set_pooling(m, pooling)
    return for_scoring(m, cfg.precision), tok


def _main(model: str = "", corpus: str = "", queries: str = "", baselines: bool = False, overwrite: bool = False,
          sts: bool = False) -> None:
    if not model and not baselines:
        raise settings.SettingsError("give --model=PATH_OR_NAME and/or --baselines")
    cfg = settings.resolved()
    corpus = corpus or cfg.benchmark_corpus_file
    run_benchmark(cli_embedders(model, baselines, corpus, cfg), cfg, corpus, queries or None, overwrite, sts)


def main(argv: list[str] | None = None) -> None:
    """`python semantic_benchmark.py ...`: the command line (see semantic_benchmark.py's docstring)."""
    cli.cli(_main, flags={"model": "", "corpus": "", "queries": "", "baselines": False, "overwrite": False,
                               "sts": False}, argv=cli.join_space_values(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
