"""How a model runs in one run, decided once: a ModelSetup (pooling, similarity, normalization, max lengths,
precision, device).

Training builds one from the settings and the encoder it starts from (training_setup) and hands it to every
contrastive step, validation and checkpoint; the benchmark builds one per scored model (scoring_setup).
Nothing downstream reads these from the configuration again, so training, its validation and the scoring
cannot disagree about them, and the precision is chosen (and printed) once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from sentence_transformers import SentenceTransformer

from semcse.model import (ModelError, check_max_length, default_max_length, is_normalized, name_of, pooling_of,
                          resolve_precision, saved_scoring)
from settings import Config

TRAINING_METRICS = ("cosine", "euclidean")  # the setting 'metric' (the benchmark also ranks by "dot")


@dataclass(frozen=True)
class ModelSetup:
    """Every model setting of one run, resolved: what training, validation and scoring receive."""
    pooling: str             # the model's Pooling module: "cls", "mean", ...
    metric: str              # the similarity the loss, the validation and the scoring rank with
    normalize: bool          # whether the pipeline ends with unit vectors (a Normalize module)
    max_length: int          # tokens per text in training and the partner-summary validation (max_length)
    scoring_max_length: int  # tokens per text where it is scored as the benchmark scores (benchmark_max_length,
                             #   0 = the model's own max_seq_length): the benchmark, the Title-Abstract validation
    precision: str           # forward passes in "bf16", "fp16" or "fp32" (resolve_precision's choice)
    device: torch.device


def training_setup(cfg: Config, model: SentenceTransformer, device: torch.device,
                   validates_papers: bool = False) -> ModelSetup:
    """The setup of a training run: cfg's pooling and metric ("auto": the model's own), max_length, the
    benchmark's length for the Title-Abstract validation, the precision for `device`.

    Refuses now what would otherwise fail at the first batch, after the run folder was written: a precision
    the device cannot run, a max length beyond the model's positions (benchmark_max_length too when the
    validation scores papers)."""
    precision = resolve_precision(device.type, cfg.precision)
    check_max_length(model, cfg.max_length, "max_length")
    if validates_papers and cfg.benchmark_max_length:
        check_max_length(model, cfg.benchmark_max_length, "benchmark_max_length")
    own = resolve_model_settings(cfg, model)
    scoring_max_length = cfg.benchmark_max_length or default_max_length(model)
    return ModelSetup(pooling=own.pooling, metric=own.metric, normalize=is_normalized(model), max_length=cfg.max_length,
                      scoring_max_length=scoring_max_length, precision=precision, device=device)


def scoring_setup(cfg: Config, model: SentenceTransformer) -> ModelSetup:
    """How the benchmark scores `model` in this run: through its own modules (pooling, normalization), ranked
    with its own similarity or the metric cfg forces on every model, at benchmark_max_length (0: its own
    max_seq_length), in the precision for the device it is on."""
    device = next(model.parameters()).device
    precision = resolve_precision(device.type, cfg.precision)
    if cfg.benchmark_max_length:
        check_max_length(model, cfg.benchmark_max_length, "benchmark_max_length")
    metric = cfg.metric if cfg.metric != "auto" else model.similarity_fn_name  # forced on every model, or its own
    scoring_max_length = cfg.benchmark_max_length or default_max_length(model)
    return ModelSetup(pooling=pooling_of(model), metric=metric, normalize=is_normalized(model),
                      max_length=cfg.max_length, scoring_max_length=scoring_max_length, precision=precision,
                      device=device)


def resolve_model_settings(cfg: Config, model: SentenceTransformer | str) -> Config:
    """`cfg` with pooling and metric "auto" replaced by the model's own (a loaded model, or a folder or
    name, read from its files without loading weights): what training builds and saves."""
    if cfg.pooling != "auto" and cfg.metric != "auto":
        return cfg
    if isinstance(model, str):
        own = saved_scoring(model, cfg.offline)
    else:
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        own = {"pooling": pooling_of(model), "metric": model.similarity_fn_name}
    if cfg.metric == "auto" and own["metric"] not in TRAINING_METRICS:
        raise ModelError(f"{model if isinstance(model, str) else name_of(model)}: its similarity is '{own['metric']}' "
                         f"(similarity_fn_name); training and its validation support {' and '.join(TRAINING_METRICS)}: "
                         f"choose one with --metric")
    return cfg.replace(**{k: own[k] for k in ("pooling", "metric") if getattr(cfg, k) == "auto"})
