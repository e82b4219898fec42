"""The benchmark's harness: the models of a run (embedders, with an embedding cache), resumable results
files, and a run from corpus to table and map. The science (tasks, metrics, Perf.) is benchmark_tasks.py,
the results files, table and map benchmark_results.py; the command line is semantic_benchmark.py.

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
import time
from importlib import metadata
from typing import Iterable, Iterator

import numpy as np
import torch

import settings
from load_data import DataError, at_least_two, ensure_default_data, load_corpus
from semcse import files
from semcse.benchmark_results import (Skipped, describe_scoring, display_names, draw_map, map_problem,  # noqa: F401
                                      model_identity, read_results, results_path, results_table)
from semcse.benchmark_tasks import (TASKS, load_queries, paper_text, perf_scores, task_abstract_segments,
                                    task_clustering, task_query, task_sts_b, task_title_abstract)
from semcse.model import (ModelError, encode, find_model, for_scoring, load_model, saved_scoring, scoring_of,
                          set_pooling)
from semcse.model_setup import ModelSetup, scoring_setup
from settings import Config

ACLSUM_CORPUS = os.path.join("data", "benchmark_corpus.jsonl")  # built by load_data.ensure_default_data


def run_benchmark(embedders: Iterable, cfg: Config, corpus_file: str | None = None, queries_file: str | None = None,
                  overwrite: bool = False, sts: bool = False) -> dict[str, dict]:
    """Score each embedder (taken one at a time, so models can be loaded lazily; a `Skipped` is named in
    the table), then Perf., table, map. A queries file given (here or as a setting) must exist; the
    default one may be missing, and the Query task is then skipped, said so."""
    corpus_file = corpus_file or cfg.benchmark_corpus_file
    if not os.path.exists(corpus_file) and os.path.normpath(corpus_file) == ACLSUM_CORPUS:
        ensure_default_data(cfg.data_dir)
    queries_file = queries_to_use(cfg, queries_file)
    cfg = cfg.replace(queries_file=queries_file)  # the file actually used, in messages and results
    corpus = at_least_two(load_corpus(corpus_file), corpus_file, "the benchmark")
    queries = load_queries(queries_file, {p["id"] for p in corpus}) if queries_file and os.path.exists(queries_file) \
        else None
    forced = cfg.metric != "auto"
    out_dir = os.path.join(cfg.output_dir, "benchmark", os.path.splitext(os.path.basename(corpus_file))[0]
                           + (f"-{cfg.metric}" if forced else ""))
    os.makedirs(out_dir, exist_ok=True)
    data = {"corpus_file": corpus_file, "corpus_sha256": _file_hash(corpus_file), "n_papers": len(corpus),
            "queries_file": queries_file, "queries_sha256": _file_hash(queries_file) if queries else None}
    print(f"benchmark: {len(corpus)} papers from {corpus_file}, similarity "
          f"{'forced to ' + cfg.metric if forced else 'each model’s own'}; results in {out_dir}")
    results, maps, missing = {}, {}, []
    labels = [p["label"] for p in corpus]
    for emb in embedders:
        if isinstance(emb, Skipped):
            print(f"\n== {emb.name}: not scored: {emb.reason}")
            missing.append(emb)
            continue
        if emb.name in results:  # two models under one name: the row and the file must still be its own
            emb.name = f"{emb.name} [{model_identity(emb.path) or len(results)}]"
        emb.overwrite = overwrite  # --overwrite encodes again too, never trusting cached embeddings
        results[emb.name] = score_model(emb, corpus, queries, data, cfg, out_dir, overwrite, sts)
        if emb.role in ("trained", "base") and not map_problem(labels):
            maps[emb.name] = (emb.embed([paper_text(p, emb.sep) for p in corpus]), emb.metric)
    perf = perf_scores(results, cfg.perf_reference)
    for name, r in results.items():  # Perf. depends on the run's models: stored as "of this run"
        r["perf"], r["perf_per_task"] = perf[name]
        r["perf_run_models"], r["perf_reference"] = list(results), cfg.perf_reference
        files.write_json_atomic(r["results_file"], r, indent=1, ensure_ascii=False)
    table = results_table(results, cfg, data, missing)
    print("\n" + table)
    with files.atomic_write(os.path.join(out_dir, "results.md")) as f:
        f.write(table + "\n")
    if any(r.get("role") in ("trained", "base") for r in results.values()):
        draw_map(maps, labels, os.path.join(out_dir, "map.png"), cfg.seed)  # or says why not
    return results


def queries_to_use(cfg: Config, queries_file: str | None = None) -> str:
    """The run's queries file: `queries_file` if given, else the setting ("" = none). One the user gave (here,
    or a queries_file other than settings.py's) must exist; a missing default skips the Query task, said so."""
    given = queries_file is not None or not settings.is_default("queries_file", cfg.queries_file)
    path = cfg.queries_file if queries_file is None else queries_file
    if path and given and not os.path.exists(path):
        raise DataError(f"{path}: file not found (the search queries of the Query task; --queries or setting "
                        f"'queries_file', \"\" for none)")
    return path


# ----------------------------------------------------------------------------------------------
# Embedders: name, role, sep, params, path, metric, scoring, key and embed(texts) -> [n, dim]


class ModelEmbedder:
    """A sentence-transformers model behind model.encode(), ranked with its own similarity (or the
    run's forced metric). Embeddings are cached on disk; a cache entry is used only if it has the
    right shape and finite values, and only finite encodes of the right shape are written.

    `setup`: how it is scored in this run (model_setup.scoring_setup; built here when not given)."""

    def __init__(self, name: str, model, tokenizer, cfg: Config, role: str = "", path: str = "",
                 setup: ModelSetup | None = None):
        self.name, self.model, self.tokenizer, self.cfg, self.role = name, model, tokenizer, cfg, role
        self.path, self.sep = path or getattr(model, "name_or_path", ""), tokenizer.sep_token or " "
        self.params = sum(p.numel() for p in model.parameters())
        self.setup = setup or scoring_setup(cfg, model)
        self.max_length, self.metric = self.setup.scoring_max_length, self.setup.metric
        forced = cfg.metric != "auto"
        self.scoring = {**scoring_of(model, self.max_length), "similarity": self.metric, "forced": forced}
        self.overwrite, self._fresh = False, set()
        # Identity = the weights themselves (a hash of every tensor's bytes, ~0.2 s per 100M params)
        # plus every module's configuration, so a retrained or re-pooled model never reuses stale
        # embeddings or results.
        h = hashlib.sha256(f"{type(tokenizer).__name__}|{len(tokenizer)}".encode())
        for k, t in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        # The precision as set ("auto" too), as cache entries and results files have always been keyed.
        modules = [(type(m).__name__, m.get_config_dict() if hasattr(m, "get_config_dict") else {}) for m in model]
        self.key = {"fingerprint": h.hexdigest(), "modules": json.loads(json.dumps(modules, default=str)),
                    "scoring": self.scoring, "precision": cfg.precision, "encode_batch_size": cfg.encode_batch_size,
                    "device": self.setup.device.type}

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
                     self.setup.precision)
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
    path = results_path(out_dir, emb.name, emb.path)
    key = {**emb.key, "metric": emb.metric, "knn_k": cfg.knn_k, "seed": cfg.seed,
           "corpus_sha256": data["corpus_sha256"]}
    result = {} if overwrite else read_results(path, data["n_papers"])
    if result and result.get("key") != key:
        print(f"{path}: model, data or settings changed since it was written; scoring again")
        result = {}
    result.update(model=emb.name, results_file=path, role=emb.role, path=emb.path, params=emb.params,
                  scoring=emb.scoring, key=key, metric=emb.metric, **data, versions=_versions(),
                  settings=settings.public_settings(cfg))
    result.setdefault("tasks", {})
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


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{p: metadata.version(p) for p in (
        "numpy", "torch", "transformers", "sentence-transformers", "scikit-learn")}}


# ----------------------------------------------------------------------------------------------
# The models of a command-line run


def cli_embedders(model: str, baselines: bool, corpus_file: str, cfg: Config) -> Iterator:
    """The run's models, loaded one at a time: --model, and with --baselines the untrained base encoder
    (scored like the trained model), the trained model, TF-IDF, the packaged all-MiniLM-L6-v2 as shipped
    and the setting baseline_models ("name_or_path[:pooling]", the pooling for plain encoders).

    Checked now, before anything is scored: a model the user named (--model, baseline_models, or a
    --encoder_checkpoint, --save_name or --output_dir other than settings.py's) must be there (exit 2).
    A default that is missing (the packaged MiniLM, the default run's best/) is a `Skipped`: the table
    names it and says why."""
    trained = os.path.join(cfg.output_dir, cfg.save_name, "best")
    specs = [(model, cfg.pooling, "model", True)] if model else []
    if baselines:
        files.recover_interrupted_folder(trained)  # a training killed between the two renames of its best/
        default_run = all(settings.is_default(k, getattr(cfg, k)) for k in ("output_dir", "save_name"))
        specs += [(cfg.encoder_checkpoint, cfg.pooling, "base",
                   not settings.is_default("encoder_checkpoint", cfg.encoder_checkpoint)),
                  (trained, "auto", "trained", not default_run),
                  ("lexical", "", "lexical", False), (settings.packaged_minilm(), "auto", "baseline", False)]
        for item in filter(None, (s.strip() for s in cfg.baseline_models.split(","))):
            path, _, pool = item.rpartition(":") if item.endswith((":cls", ":mean")) else (item, "", cfg.pooling)
            specs.append((path, pool, "baseline", True))
    seen: set[str] = set()
    specs = [s for s in specs if not (model_identity(s[0]) in seen or seen.add(model_identity(s[0])))]
    names = display_names([p if role != "lexical" else "TF-IDF (lexical)" for p, _, role, _ in specs])
    absent: list[str | None] = [None] * len(specs)  # why a default is not there
    for i, (path, _, role, given) in enumerate(specs):
        if role == "trained" and not os.path.isdir(trained):
            why = f"no trained model at {trained} (run python train_embedding_model.py"
            if given:
                raise ModelError(f"{why} --save_name={cfg.save_name}, or check --save_name and --output_dir)")
            absent[i] = why + ")"
        elif given:
            find_model(path, cfg.offline)  # ModelError naming it: a mistyped path, a name not on this machine
    return _load_each(specs, names, absent, trained, corpus_file, cfg)


def _load_each(specs: list[tuple[str, str, str, bool]], names: list[str], absent: list[str | None], trained: str,
               corpus_file: str, cfg: Config) -> Iterator:
    """cli_embedders' models as embedders, each loaded when the one before is scored."""
    for (path, pooling, role, given), name, why in zip(specs, names, absent):
        name += {"base": " (untrained base)", "trained": " (trained)"}.get(role, "")
        if role == "lexical":
            yield TfidfEmbedder(load_corpus(corpus_file), cfg)
            continue
        if why:
            yield Skipped(name, why, role)
            continue
        try:
            m, tok, setup = load_for_scoring(path, pooling, role, trained, cfg)
        except ModelError as e:
            if given:
                raise
            yield Skipped(name, str(e), role)
            continue
        yield ModelEmbedder(name, m, tok, cfg, role=role, path=path, setup=setup)


def load_for_scoring(path: str, pooling: str, role: str, trained: str, cfg: Config):
    """(model, tokenizer, its ModelSetup): load_model for the benchmark, weights cast for scoring
    (model.for_scoring) in the setup's precision. The base encoder takes the trained model's pooling and
    similarity (so both are scored alike); an explicit --pooling applies to plain encoders only."""
    if role == "base" and os.path.isdir(trained):
        own = saved_scoring(trained, cfg.offline)  # pooling, similarity and normalization of the trained model
        m, tok = load_model(path, cfg.device, pooling=own["pooling"], metric=own["metric"],
                            normalize=own["normalized"], offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
    else:
        m, tok = load_model(path, cfg.device, offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
        if pooling not in ("auto", "") and m.plain_encoder:
            set_pooling(m, pooling)
    setup = scoring_setup(cfg, m)  # how it is scored in this run, decided once
    return for_scoring(m, setup.precision), tok, setup
