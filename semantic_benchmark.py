"""The semantic benchmark: models scored on four tasks, their metrics, and the aggregate Perf.

    python semantic_benchmark.py --model=PATH_OR_NAME [--baselines] [--corpus=FILE] [--queries=FILE]
                                 [--metric=cosine|euclidean] [--pooling=cls|mean] [--overwrite] [--sts]

Every model is scored as its users would: through all its modules (pooling, Dense, Normalize, ...),
at its own max_seq_length (setting benchmark_max_length), ranked with its own similarity. An explicit
--metric forces one similarity on every model (an ablation; the table says so); --pooling applies to
plain Hugging Face encoders. --baselines adds the untrained base encoder, the trained model, TF-IDF,
the packaged all-MiniLM-L6-v2 and the setting baseline_models.

The tasks, their metrics and Perf. are in semcse/benchmark_tasks.py (its docstring defines them); the
harness around them (the run's models, embedding cache, resumable results files) in semcse/benchmark.py,
the table and the map in semcse/benchmark_results.py.
"""
from __future__ import annotations

import sys
from typing import Any

import settings
from semcse import cli
from semcse.benchmark import ModelEmbedder, cli_embedders, load_for_scoring, run_benchmark
from semcse.model import ModelError, short_name
from settings import Config


def evaluate_model_semantics(model, tokenizer, output_processing: str = "last_hidden", metric: str | None = None,
                             corpus_file: str | None = None, queries_file: str | None = None,
                             name: str | None = None, overwrite: bool = False, baseline: str | None = None,
                             cfg: Config | None = None, **overrides: Any) -> dict:
    """The paper's entry point (main.py): score one model from model.load_model on the four tasks,
    print the table, return its results.

    output_processing="last_hidden": the model's own pipeline on the last hidden layer (its pooling,
    and any Dense / Normalize). metric: None or "auto" = the model's own similarity; else forced.
    baseline: an encoder (e.g. the untrained one training started from) scored beside it with the same
    pooling and similarity, so the table reads base -> trained and Perf. has its zero point.
    cfg (default: the settings) plus `overrides`: the run's configuration (score_memory_mb, device, ...).
    """
    if output_processing != "last_hidden":
        raise ValueError(f"output_processing must be 'last_hidden', got '{output_processing}'")
    if not hasattr(model, "similarity_fn_name"):
        raise ModelError(f"{type(model).__name__}: pass the (model, tokenizer) that model.load_model returns")
    cfg = (cfg or settings.resolved()).replace(**overrides, **({"metric": metric} if metric else {}))
    name = name or f"{short_name(getattr(model, 'name_or_path', 'model'))} (trained)"
    embedders = [ModelEmbedder(name, model, tokenizer, cfg, role="trained")]
    if baseline:
        m, tok, setup = load_for_scoring(baseline, "auto", "base", getattr(model, "name_or_path", ""), cfg)
        embedders.insert(0, ModelEmbedder(f"{short_name(baseline)} (untrained base)", m, tok, cfg, role="base",
                                          path=baseline, setup=setup))
    return run_benchmark(embedders, cfg, corpus_file, queries_file, overwrite)[name]


def _main(model: str = "", corpus: str = "", queries: str = "", baselines: bool = False, overwrite: bool = False,
          sts: bool = False) -> None:
    if not model and not baselines:
        raise settings.SettingsError("give --model=PATH_OR_NAME and/or --baselines")
    cfg = settings.resolved()
    corpus = corpus or cfg.benchmark_corpus_file
    run_benchmark(cli_embedders(model, baselines, corpus, cfg), cfg, corpus, queries or None, overwrite, sts)


def main(argv: list[str] | None = None) -> None:
    """`python semantic_benchmark.py ...`: the command line (see the docstring above)."""
    cli.cli(_main, flags={"model": "", "corpus": "", "queries": "", "baselines": False, "overwrite": False,
                          "sts": False}, argv=cli.join_space_values(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
