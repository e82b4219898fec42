"""Models as sentence-transformers pipelines: load, save, and the one `encode()` (validation, benchmark).

A model is a `SentenceTransformer`: Transformer -> Pooling -> (Dense, Normalize, ...) with its own
`max_seq_length` and `similarity_fn_name`. A sentence-transformers folder loads with all its modules;
a plain Hugging Face encoder is wrapped as Transformer + Pooling(pooling) with similarity = metric,
where "auto" means CLS pooling and the Euclidean distance (the released SemCSE's setting).
`embed()` runs every module on a tokenized batch (with grad, for training); `encode()` does it for a
list of texts (validation, the benchmark); similarity.py holds the one similarity that the loss
and all scoring use (re-exported here). Saved models are sentence-transformers folders, so
`SentenceTransformer(path).encode()` gives the same vectors, and `AutoModel.from_pretrained(path)`
loads the encoder.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from tqdm.auto import tqdm
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import files
import settings
from settings import Config, SettingsError
from similarity import METRICS, block_rows, partner_ranks, similarity, similarity_blocks  # noqa: F401 -- re-exported

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

# Files that hold a tokenizer's vocabulary; without one, transformers builds a 5-token tokenizer that
# maps every word to [UNK] (and scores chance) instead of failing.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "spm.model", "tokenizer.model", "bpe.codes")


class ModelError(settings.UserError, ValueError):
    """A model that cannot be loaded or used; the message names the path or name."""


def load_model(name_or_path: str, device: str = "auto", pooling: str = "auto", metric: str = "auto", *,
               normalize: bool | None = None, offline: bool = True, trust_remote_code: bool = False
               ) -> tuple[SentenceTransformer, PreTrainedTokenizerBase]:
    """(model, tokenizer): a sentence-transformers pipeline in eval mode on `device`.

    A sentence-transformers folder keeps its modules, max_seq_length and similarity; a plain encoder
    gets Transformer + Pooling. `pooling` / `metric` other than "auto" replace the model's own;
    `normalize` True / False adds / drops a Normalize module (None: the model's own).
    `offline` (the setting): a Hugging Face name is looked up only in the local cache, never downloaded.
    """
    label = str(name_or_path)
    folder = _local_folder(label, offline)
    modules = _module_list(folder, label)
    encoder_dir = os.path.join(folder, modules[0]["path"]) if modules else folder
    encoder = _load_encoder(encoder_dir, label, trust_remote_code)
    _check_tokenizer_files(encoder_dir, label)
    with _reusing(encoder):  # the Transformer module takes the encoder we loaded and checked
        if modules:
            model = _load_modules(folder, label, trust_remote_code)
        else:
            transformer = Transformer(encoder_dir, max_seq_length=min(_position_limit(encoder), 512))
            pooler = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
            model = SentenceTransformer(modules=[transformer, pooler], device="cpu", similarity_fn_name="euclidean")
    _check_tokenizer(model, encoder, label)
    if model.similarity_fn_name not in METRICS:
        raise ModelError(f"{label}: similarity '{model.similarity_fn_name}' is not supported ({', '.join(METRICS)})")
    if pooling != "auto":
        set_pooling(model, pooling, label)
    if metric != "auto":
        model.similarity_fn_name = metric
    if normalize is not None and set_normalize(model, normalize):
        print(f"note: {label}: {'a Normalize module added' if normalize else 'its Normalize module dropped'} "
              f"({'unit' if normalize else 'raw'} vectors{', as the released SemCSE' if metric == 'euclidean' else ''})")
    model.name_or_path = label  # what the user named it, for messages and tables
    model.plain_encoder = modules is None  # wrapped here, not a sentence-transformers folder
    return model.to(resolve_device(device)).eval(), model.tokenizer


def save_model(model: SentenceTransformer, path: str, training_state: dict | None = None) -> str:
    """Save as a sentence-transformers folder: every module, max_seq_length and similarity_fn_name;
    atomically (files.atomic_folder: a crash leaves the old folder or the new one). `training_state`
    (optimizer, scheduler, step, RNG) is saved in the same swap as training_state.pt, so weights and
    state always match."""
    with files.atomic_folder(path) as tmp:
        model.save(tmp, create_model_card=False)
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, "training_state.pt"))
    return path


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
    return cfg.replace(**{k: own[k] for k in ("pooling", "metric") if getattr(cfg, k) == "auto"})


def scoring_of(model: SentenceTransformer, max_length: int | None = None) -> dict:
    """How a model embeds and compares: its pooling, similarity, normalization, max length, modules."""
    return {"pooling": pooling_of(model), "similarity": model.similarity_fn_name,
            "normalized": any(isinstance(m, Normalize) for m in model),
            "max_length": max_length or default_max_length(model),
            "modules": [type(m).__name__ for m in model], "dim": model.get_embedding_dimension()}


def pooling_of(model: SentenceTransformer) -> str:
    modes = [m.pooling_mode for m in model if isinstance(m, Pooling)]
    return "+".join(modes[0]) if modes and not isinstance(modes[0], str) else (modes[0] if modes else "none")


def set_pooling(model: SentenceTransformer, pooling: str, label: str = "") -> None:
    """Replace the model's Pooling module by one of `pooling` ("cls", "mean", ...), same dimension."""
    for name, module in model.named_children():
        if isinstance(module, Pooling):
            if module.pooling_mode != pooling:
                model._modules[name] = Pooling(module.embedding_dimension, pooling_mode=pooling)
            return
    raise ModelError(f"{label or _name(model)}: has no Pooling module to set to '{pooling}'")


def set_normalize(model: SentenceTransformer, normalize: bool) -> bool:
    """Make the pipeline end with unit vectors (True: a Normalize module is appended if it has none) or
    raw ones (False: every Normalize module is dropped). Returns whether the modules changed."""
    names = [name for name, m in model.named_children() if isinstance(m, Normalize)]
    if normalize and not names:
        model.append(Normalize())
    for name in names if not normalize else []:
        del model._modules[name]
    return bool(normalize) != bool(names)


def transformer_of(model: SentenceTransformer) -> PreTrainedModel:
    """The Hugging Face encoder inside the pipeline (its first module)."""
    return getattr(model, "_orig_mod", model)[0].auto_model


def default_max_length(model: SentenceTransformer) -> int:
    """The model's own max_seq_length, never beyond its position limit."""
    limit = _position_limit(transformer_of(model))
    return min(model.max_seq_length or limit, limit)


def short_name(path: str) -> str:
    """A model's name for tables: the packaged MiniLM by its name, a folder by its last two parts."""
    if os.path.abspath(path) == os.path.abspath(settings.packaged_minilm()):
        return "all-MiniLM-L6-v2"
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-2:]) if os.path.isdir(path) else path


def is_sentence_transformers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "modules.json"))


# ----------------------------------------------------------------------------------------------
# Encoding


def embed(model: SentenceTransformer, batch: dict[str, torch.Tensor], pooling: str | None = None) -> torch.Tensor:
    """Run one tokenized batch through every module of the pipeline -> [batch, dim].

    With grad for training, without for encode(). `pooling`, if given, must be the model's own (it is
    a module of the model, not a choice made here)."""
    if pooling is not None and pooling != pooling_of(model):
        raise ModelError(f"{_name(model)}: pools by '{pooling_of(model)}', not '{pooling}'")
    tokens, limit = batch["input_ids"].shape[1], _position_limit(transformer_of(model))
    if tokens > limit:  # beyond it the position embeddings fail deep inside torch with an index error
        raise SettingsError(f"a text of {tokens} tokens is longer than {_name(model)}'s position limit "
                            f"{limit}: set max_length (training) or benchmark_max_length to at most {limit}")
    return model(dict(batch))["sentence_embedding"]


@torch.inference_mode()
def encode(model: SentenceTransformer, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64,
           max_length: int | None = None, precision: str = "auto", show_progress: bool | None = None
           ) -> np.ndarray:
    """Embed texts through all the model's modules: float32 array [len(texts), dim], in input order.

    Texts are tokenized once (truncated to `max_length`, default the model's own), sorted by token
    length (so each batch pads only to its own longest text), and run without grad under autocast.
    """
    if batch_size < 1:
        raise SettingsError(f"setting 'encode_batch_size' must be at least 1, got {batch_size}")
    max_length = max_length or default_max_length(model)
    dim = model.get_embedding_dimension()
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), dim), dtype=np.float32)
    show = len(texts) > 5 * batch_size if show_progress is None else show_progress
    with autocast(device, precision):
        for start in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not show, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out[idx] = embed(model, batch).float().cpu().numpy()
    model.train(was_training)
    return out


def for_scoring(model: SentenceTransformer, precision: str = "auto") -> SentenceTransformer:
    """Cast a model that is only scored from here on to bf16 weights where encode() would autocast to
    bf16 (resolve_precision): no per-call weight casts and half the weight memory (bench/encode.py
    measures both). A model still being trained keeps fp32 weights; encode() then autocasts."""
    if resolve_precision(next(model.parameters()).device.type, precision) == "bf16":
        model.to(torch.bfloat16)
    return model


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise ModelError(f"setting 'device': {device} is not available here ({torch.cuda.device_count()} CUDA "
                         f"devices); use --device=cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("setting 'device': mps is not available here; use --device=cpu or auto")
    return torch.device(device)


@functools.cache
def resolve_precision(device_type: str, precision: str = "auto") -> str:
    """The precision forward passes run in on `device_type`: "bf16", "fp16" or "fp32".

    "auto" is the fastest correct one on this machine: on CUDA bf16 where the GPU has it, else fp16
    (with loss scaling in training); on a CPU bf16 only where it is native (AVX512-BF16 or AMX, as
    torch reports the CPU) *and* a short measurement confirms it beats fp32, else fp32. An AVX2-only CPU
    emulates bf16: a MiniLM training step took 115-121 s in bf16 against 5-7 s in fp32. Decided once
    per process and printed once, with the reason."""
    if precision == "fp16" and device_type != "cuda":
        raise ModelError("setting 'precision': fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if precision != "auto":
        chosen, why = precision, "set by the setting 'precision'"
    elif device_type == "cuda":
        native = torch.cuda.is_bf16_supported()
        chosen, why = ("bf16", "this GPU has bf16") if native else ("fp16", "this GPU has no bf16")
    elif device_type != "cpu":
        chosen, why = "fp32", f"autocast is not used on {device_type}"
    else:
        chosen, why = _cpu_precision()
    print(f"precision: {chosen} on {device_type} ({why})")
    return chosen


def _cpu_precision() -> tuple[str, str]:
    """("bf16" | "fp32", why) for this CPU: its flags first, then a timing of a few encoder-sized matmuls
    (well under a second) where the flags promise native bf16, since a virtual machine may report
    flags its host does not honour."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    native = [f for f in ("amx_bf16", "avx512_bf16") if caps.get(f)]
    level = torch.backends.cpu.get_cpu_capability()
    if not native:
        return "fp32", f"this CPU ({level}) has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
    fp32_ms, bf16_ms = (_matmul_ms(dtype) for dtype in (torch.float32, torch.bfloat16))
    if bf16_ms * 1.2 < fp32_ms:
        return "bf16", f"native bf16 ({', '.join(native)}), measured {fp32_ms / bf16_ms:.1f}x fp32's speed"
    return "fp32", f"the CPU reports {', '.join(native)} but bf16 measured {fp32_ms / bf16_ms:.2f}x fp32's speed"


def _matmul_ms(dtype: torch.dtype, repeats: int = 5) -> float:
    """Milliseconds of one [256, 384] x [384, 1536] product (a MiniLM feed-forward layer), best of `repeats`."""
    x, w = torch.ones(256, 384, dtype=dtype), torch.ones(1536, 384, dtype=dtype)
    torch.nn.functional.linear(x, w)  # warm-up: kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes in resolve_precision's choice: bf16 or fp16 autocast, or none."""
    chosen = resolve_precision(device.type, precision)
    if chosen == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if chosen == "bf16" else torch.float16)


# ----------------------------------------------------------------------------------------------
# Loading: find the folder, check what is in it, load the encoder once


def _local_folder(name: str, offline: bool) -> str:
    """A local folder, or a Hugging Face name resolved to its folder in the cache (downloaded only
    when `offline` is False: local_files_only per call, so the setting holds for this call alone)."""
    files.recover_interrupted_folder(name)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ModelError(f"{name}: is a file, not a model folder")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=offline,
                                 ignore_patterns=["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"])
    except Exception:  # noqa: BLE001 -- not cached, bad repo id, no network: one answer
        raise ModelError(
            f"model '{name}' is not a local folder and not in the Hugging Face cache; this project "
            f"never downloads at run time: fetch it once elsewhere (huggingface-cli download {name}) "
            f"and pass its folder, or set --offline=false on a machine with internet") from None


def _module_list(folder: str, label: str) -> list[dict] | None:
    """modules.json of a sentence-transformers folder (None for a plain encoder); its first module
    must be a Transformer."""
    path = os.path.join(folder, "modules.json")
    if not os.path.exists(path):
        return None
    try:
        modules = json.load(open(path, encoding="utf-8"))
        first = modules[0]["type"].rsplit(".", 1)[-1]
    except (ValueError, LookupError, TypeError, AttributeError):
        raise ModelError(f"{label}: modules.json is damaged (expected a list of modules)") from None
    if first != "Transformer":
        raise ModelError(f"{label}: its first module is {first}; an embedding model here starts with a Transformer")
    return modules


def _load_encoder(folder: str, label: str, trust_remote_code: bool) -> PreTrainedModel:
    """The Hugging Face encoder of `folder`, refusing what would load "successfully" but wrongly."""
    files = os.listdir(folder) if os.path.isdir(folder) else []
    if not any(f.endswith((".safetensors", ".bin")) for f in files):
        raise ModelError(f"{label}: model folder has no weights (*.safetensors or *.bin)")
    if "config.json" not in files:
        raise ModelError(f"{label}: model folder has no config.json")
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if any(f.endswith(".safetensors") for f in files):
        kwargs["use_safetensors"] = True  # never unpickle a .bin beside them
    try:
        model, info = AutoModel.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as e:  # noqa: BLE001 -- damaged files raise RuntimeError, SafetensorError, ...
        if "mismatched_sizes" in str(e):
            raise ModelError(f"{label}: its weights do not fit its config.json (tensor shapes differ: "
                             f"wrong architecture, or an edited config?)") from None
        raise ModelError(f"{label}: cannot load model folder ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]})") from None
    # Weights of another architecture load with the missing tensors drawn at random: refuse that
    # (a missing pooler is fine, no embedding uses it).
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise ModelError(f"{label}: its weights do not fit its config.json ({model.config.model_type}): "
                         f"{len(missing)} tensors missing, e.g. '{missing[0]}' (wrong architecture?)")
    if model.config.is_encoder_decoder:
        raise ModelError(f"{label}: an encoder-decoder model ({model.config.model_type}); an embedding "
                         f"model needs an encoder (BERT, RoBERTa, DeBERTa, ...)")
    return model.eval()


def _load_modules(folder: str, label: str, trust_remote_code: bool) -> SentenceTransformer:
    """All the modules of a sentence-transformers folder (Pooling, Dense, Normalize, ...)."""
    try:
        return SentenceTransformer(folder, device="cpu", local_files_only=True,
                                   trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 -- a damaged module folder fails in many ways
        raise ModelError(f"{label}: cannot load its sentence-transformers modules ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]})") from None


def _check_tokenizer_files(folder: str, label: str) -> None:
    files = os.listdir(folder)
    if not any(f in VOCABULARY_FILES or f.endswith(".model") for f in files):
        raise ModelError(f"{label}: model folder has no tokenizer vocabulary ({', '.join(VOCABULARY_FILES[:3])}, "
                         f"...): every word would be [UNK]")


def _check_tokenizer(model: SentenceTransformer, encoder: PreTrainedModel, label: str) -> None:
    """The tokenizer must fit the embedding matrix: no id beyond it, and most of it reachable."""
    n, rows = len(model.tokenizer), encoder.get_input_embeddings().num_embeddings
    if n > rows or n < rows // 2:
        raise ModelError(f"{label}: its tokenizer has {n} tokens for {rows} token embeddings "
                         f"(a tokenizer of another model?)")


@contextlib.contextmanager
def _reusing(encoder: PreTrainedModel):
    # sentence-transformers' Transformer module loads the weights itself; hand it the encoder already
    # loaded and checked above, so the weights are read once and our checks hold for what is used.
    original = Transformer._load_model
    Transformer._load_model = lambda self, *args, **kwargs: encoder
    try:
        yield
    finally:
        Transformer._load_model = original


def _position_limit(encoder: PreTrainedModel) -> int:
    """Longest input the position embeddings allow (RoBERTa-like models reserve padding_idx + 1)."""
    limit = getattr(encoder.config, "max_position_embeddings", None) or 512
    positions = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    if getattr(positions, "padding_idx", None) is not None:
        limit -= positions.padding_idx + 1
    return limit


def saved_scoring(name_or_path: str, offline: bool = True) -> dict:
    """pooling, metric and normalization of a model folder from its files, without loading weights: a
    sentence-transformers folder's 1_Pooling, similarity_fn_name (cosine when unset, as
    sentence-transformers) and Normalize module; a plain encoder: cls, euclidean, not normalized."""
    folder = _local_folder(name_or_path, offline)
    if not is_sentence_transformers_folder(folder):
        return {"pooling": "cls", "metric": "euclidean", "normalized": False}
    modules = _module_list(folder, name_or_path)
    pool = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    c = _read_json(os.path.join(folder, pool, "config.json")) if pool else {}
    pooling = c.get("pooling_mode") or ("cls" if c.get("pooling_mode_cls_token") else
                                        "mean" if c.get("pooling_mode_mean_tokens") else "none")
    metric = _read_json(os.path.join(folder, "config_sentence_transformers.json")).get("similarity_fn_name")
    normalized = any(m["type"].endswith("Normalize") for m in modules)
    return {"pooling": pooling, "metric": metric or "cosine", "normalized": normalized}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ModelError(f"{path}: is not valid JSON (damaged model folder?)") from None
    return obj if isinstance(obj, dict) else {}


def _name(model) -> str:
    return getattr(model, "name_or_path", None) or "the model"
