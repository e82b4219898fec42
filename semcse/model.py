"""Models as sentence-transformers pipelines: load, save, and the one `encode()` (validation, benchmark).

A model is a `SentenceTransformer`: Transformer -> Pooling -> (Dense, Normalize, ...) with its own
`max_seq_length` and `similarity_fn_name`. A sentence-transformers folder loads with all its modules;
a plain Hugging Face encoder is wrapped as Transformer + Pooling(pooling) with similarity = metric,
where "auto" means CLS pooling and the Euclidean distance (the released SemCSE's setting).
`embed()` runs every module on a tokenized batch (with grad, for training); `encode()` does it for a
list of texts (validation, the benchmark); similarity.py holds the one similarity that the loss
and all scoring use (re-exported here). Saved models are sentence-transformers folders, so
`SentenceTransformer(path).encode()` gives the same vectors, and `AutoModel.from_pretrained(path)`
loads the encoder. How a model runs in one run (its pooling, similarity, lengths, precision, device) is
decided once, as a model_setup.ModelSetup; the functions here take its values.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import settings
from semcse import files
from semcse.model_folders import (ModelError, check_tokenizer, check_tokenizer_files,  # noqa: F401 -- re-exported
                                  disk_problem, find_model, is_sentence_transformers_folder, load_encoder,
                                  load_modules, module_list, plain_transformer, position_limit, reusing,
                                  saved_scoring)
from semcse.similarity import (METRICS, block_rows, partner_ranks, similarity,  # noqa: F401 -- re-exported
                               similarity_blocks)
from settings import SettingsError

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


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
    folder = find_model(label, offline)
    modules = module_list(folder, label)
    encoder_dir = os.path.join(folder, modules[0]["path"]) if modules else folder
    encoder = load_encoder(encoder_dir, label, trust_remote_code)
    check_tokenizer_files(encoder_dir, label)
    with reusing(encoder):  # the Transformer module takes the encoder we loaded and checked
        if modules:
            model = load_modules(folder, label, trust_remote_code)
        else:
            transformer = plain_transformer(encoder_dir, min(position_limit(encoder), 512), label)
            pooler = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
            model = SentenceTransformer(modules=[transformer, pooler], device="cpu", similarity_fn_name="euclidean")
    check_tokenizer(model, encoder, label)
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
    state always match. A full disk (an OSError, or what torch and safetensors raise for it) is a
    ModelError naming the folder and the free space; the previous folder is kept."""
    try:
        with files.atomic_folder(path) as tmp:
            model.save(tmp, create_model_card=False)
            if training_state is not None:
                torch.save(training_state, os.path.join(tmp, "training_state.pt"))
    except Exception as e:  # noqa: BLE001 -- a disk problem is told apart below; anything else is raised as is
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        problem = disk_problem(e, path, weights * (3 if training_state is not None else 1))  # + AdamW's 2 moments
        if problem is None:
            raise
        raise ModelError(f"{path}: cannot save the model ({problem}); its previous save is kept") from None
    return path


def scoring_of(model: SentenceTransformer, max_length: int | None = None) -> dict:
    """How a model embeds and compares: its pooling, similarity, normalization, max length, modules."""
    return {"pooling": pooling_of(model), "similarity": model.similarity_fn_name,
            "normalized": is_normalized(model),
            "max_length": max_length or default_max_length(model),
            "modules": [type(m).__name__ for m in model], "dim": model.get_embedding_dimension()}


def pooling_of(model: SentenceTransformer) -> str:
    modes = [m.pooling_mode for m in model if isinstance(m, Pooling)]
    return "+".join(modes[0]) if modes and not isinstance(modes[0], str) else (modes[0] if modes else "none")


def is_normalized(model: SentenceTransformer) -> bool:
    """Whether the pipeline ends with unit vectors (it has a Normalize module)."""
    return any(isinstance(m, Normalize) for m in model)


def set_pooling(model: SentenceTransformer, pooling: str, label: str = "") -> None:
    """Replace the model's Pooling module by one of `pooling` ("cls", "mean", ...), same dimension."""
    for name, module in model.named_children():
        if isinstance(module, Pooling):
            if module.pooling_mode != pooling:
                model._modules[name] = Pooling(module.embedding_dimension, pooling_mode=pooling)
            return
    raise ModelError(f"{label or name_of(model)}: has no Pooling module to set to '{pooling}'")


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
    limit = position_limit(transformer_of(model))
    return min(model.max_seq_length or limit, limit)


def check_max_length(model: SentenceTransformer, max_length: int, setting: str) -> None:
    """SettingsError naming `setting` when `max_length` tokens are beyond the model's position limit: checked
    at start-up, before a long text fails deep inside torch (or a run folder was written)."""
    limit = position_limit(transformer_of(model))
    if max_length > limit:
        raise SettingsError(f"setting '{setting}' is {max_length}, beyond the position limit of {name_of(model)} "
                            f"({limit} tokens): set it to at most {limit}")


def short_name(path: str) -> str:
    """A model's name for tables: the packaged MiniLM by its name, a folder by its last two parts."""
    if os.path.abspath(path) == os.path.abspath(settings.packaged_minilm()):
        return "all-MiniLM-L6-v2"
    return "/".join(os.path.normpath(path).split(os.sep)[-2:]).lstrip("/") or path  # a hub name is org/name


# ----------------------------------------------------------------------------------------------
# Encoding


def embed(model: SentenceTransformer, batch: dict[str, torch.Tensor], pooling: str | None = None) -> torch.Tensor:
    """Run one tokenized batch through every module of the pipeline -> [batch, dim].

    With grad for training, without for encode(). `pooling`, if given, must be the model's own (it is
    a module of the model, not a choice made here)."""
    if pooling is not None and pooling != pooling_of(model):
        raise ModelError(f"{name_of(model)}: pools by '{pooling_of(model)}', not '{pooling}'")
    tokens, limit = batch["input_ids"].shape[1], position_limit(transformer_of(model))
    if tokens > limit:  # beyond it the position embeddings fail deep inside torch with an index error
        raise SettingsError(f"a text of {tokens} tokens is longer than {name_of(model)}'s position limit "
                            f"{limit}: set max_length (training) or benchmark_max_length to at most {limit}")
    return model(dict(batch))["sentence_embedding"]


@torch.inference_mode()
def encode(model: SentenceTransformer, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64,
           max_length: int | None = None, precision: str = "auto", show_progress: bool | None = None
           ) -> np.ndarray:
    """Embed texts through all the model's modules: float32 array [len(texts), dim], in input order.

    Texts are tokenized once (tokenize(): cut by characters, truncated to `max_length`, default the
    model's own), sorted by token length (so each batch pads only to its own longest text), and run
    without grad under autocast.
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
    ids = [x for i in range(0, len(texts), TOKENIZE_CHUNK)  # a chunk's encodings at a time, then its ids
           for x in tokenize(tokenizer, texts[i:i + TOKENIZE_CHUNK], max_length)["input_ids"]]
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


# A text is cut to CHARS_PER_TOKEN x max_length x (the longest token of the vocabulary, in characters, at
# most LONGEST_TOKEN_CAP) characters before it is tokenized: the tokenizer handles the whole text before it
# truncates (a 20 MB abstract took 156 s and 4 GB to keep 256 tokens). No token spans more characters than
# the longest in the vocabulary (plus the spaces before it), so a normal text's first max_length tokens lie
# well inside the cut and its vectors are unchanged; only text with long runs of spaces or of characters
# outside the vocabulary could lose tokens. Per text that bounds the tokenizer's work to at most
# 4 x 512 x 64 = 131,072 characters for a 512-token model.
CHARS_PER_TOKEN = 4
LONGEST_TOKEN_CAP = 64
TOKENIZE_CHUNK = 256  # texts tokenized at once by encode(): the tokenizer's memory is per chunk


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, **kwargs: Any) -> Any:
    """`tokenizer(texts, truncation=True, max_length=max_length, **kwargs)` on texts cut by characters first
    (see CHARS_PER_TOKEN): the one tokenization of encode(), training and SARCSE's token weights."""
    limit = CHARS_PER_TOKEN * max_length * _longest_token(tokenizer)
    return tokenizer([t[:limit] for t in texts], truncation=True, max_length=max_length, **kwargs)


def _longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Characters of the vocabulary's longest token (without WordPiece's ##, BPE's Ġ or SentencePiece's ▁
    marker), within [1, LONGEST_TOKEN_CAP]; computed once per tokenizer."""
    cached = getattr(tokenizer, "_semcse_longest_token", None)
    if cached is None:
        longest = max((len(t.removeprefix("##").lstrip("Ġ▁")) for t in tokenizer.get_vocab()), default=1)
        cached = min(max(longest, 1), LONGEST_TOKEN_CAP)
        tokenizer._semcse_longest_token = cached
    return cached


def for_scoring(model: SentenceTransformer, precision: str = "auto") -> SentenceTransformer:
    """Cast a model that is only scored from here on to bf16 weights where encode() would autocast to
    bf16 (`precision`: a ModelSetup's, or the setting for resolve_precision): no per-call weight casts and
    half the weight memory (bench/encode.py measures both). A model still being trained keeps fp32
    weights; encode() then autocasts."""
    if chosen_precision(next(model.parameters()).device.type, precision) == "bf16":
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


PRECISIONS = ("bf16", "fp16", "fp32")  # what resolve_precision chooses; a ModelSetup holds one


@functools.cache
def resolve_precision(device_type: str, precision: str = "auto") -> str:
    """The precision forward passes run in on `device_type`: "bf16", "fp16" or "fp32".

    "auto" is the fastest correct one on this machine: on CUDA bf16 where the GPU has it, else fp16
    (with loss scaling in training); on a CPU bf16 only where it is native (AVX512-BF16 or AMX, as
    torch reports the CPU) *and* a short measurement confirms it beats fp32, else fp32. An AVX2-only CPU
    emulates bf16: a MiniLM training step took 115-121 s in bf16 against 5-7 s in fp32. Decided once
    per process and printed once, with the reason (a ModelSetup is built with it, once per run)."""
    _check_fp16(device_type, precision)
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


def chosen_precision(device_type: str, precision: str) -> str:
    """The precision forward passes run in: `precision` itself once resolved ("bf16", "fp16", "fp32": a
    ModelSetup's, taken as it is, not announced again), else resolve_precision's choice for the setting."""
    if precision not in PRECISIONS:
        return resolve_precision(device_type, precision)
    _check_fp16(device_type, precision)
    return precision


def _check_fp16(device_type: str, precision: str) -> None:
    if precision == "fp16" and device_type != "cuda":
        raise ModelError("setting 'precision': fp16 needs a CUDA device; use bf16 or fp32 on the CPU")


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
    """Mixed precision for forward passes in `precision` (chosen_precision: a ModelSetup's, or the setting's
    choice): bf16 or fp16 autocast, or none."""
    chosen = chosen_precision(device.type, precision)
    if chosen == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if chosen == "bf16" else torch.float16)


def name_of(model) -> str:
    """The model's name for messages: what the user called it (load_model), else "the model"."""
    return getattr(model, "name_or_path", None) or "the model"
