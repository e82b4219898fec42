"""Load, save and encode: the one `encode()` used by training-time validation and the benchmark.

Embedding = pooled last hidden layer (CLS by default, as the released SemCSE models), no
projection head. Models are saved in the sentence-transformers layout with CLS pooling and the
run's `similarity_fn_name`, so `SentenceTransformer(path).encode()` gives the same vectors as
`encode()`, and `AutoModel.from_pretrained(path)` loads the encoder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time (settings.offline=False lifts it)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import settings

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


class ModelError(ValueError):
    """A model that cannot be loaded or used; the message names the path or name."""


def load_model(name_or_path: str | None = None, device: str | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(encoder, tokenizer) from a Hugging Face name or local folder, in eval mode on `device`."""
    name_or_path = str(name_or_path or settings.encoder_checkpoint)
    recover_interrupted_save(name_or_path)
    if settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    local = os.path.isdir(name_or_path)
    kwargs = dict(local_files_only=settings.offline, trust_remote_code=settings.trust_remote_code)
    if local:
        files = os.listdir(name_or_path)
        if not any(f.endswith((".safetensors", ".bin")) for f in files):
            raise ModelError(f"{name_or_path}: model folder has no weights (*.safetensors or *.bin)")
        if any(f.endswith(".safetensors") for f in files):
            kwargs["use_safetensors"] = True  # never unpickle a .bin beside them
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except Exception as e:  # noqa: BLE001 -- damaged files raise RuntimeError, SafetensorError, ...
        if local and "mismatched_sizes" in str(e):
            raise ModelError(f"{name_or_path}: its weights do not fit its config.json (tensor shapes differ: "
                             f"wrong architecture, or an edited config?)") from None
        if local:
            raise ModelError(f"{name_or_path}: cannot load model folder ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0]})") from None
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise ModelError(
            f"model '{name_or_path}' is not a local folder and not in the Hugging Face cache; this project "
            f"never downloads at run time: fetch it once elsewhere (huggingface-cli download {name_or_path}) "
            f"and pass its folder, or set --offline=false on a machine with internet") from None
    # Weights of another architecture load "successfully" with the missing tensors drawn at random:
    # refuse that (a missing pooler is fine, the embedding never uses it).
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise ModelError(f"{name_or_path}: its weights do not fit its config.json ({model.config.model_type}): "
                         f"{len(missing)} tensors missing, e.g. '{missing[0]}' (wrong architecture?)")
    if model.config.is_encoder_decoder:
        raise ModelError(f"{name_or_path}: an encoder-decoder model ({model.config.model_type}); an embedding "
                         f"model needs an encoder (BERT, RoBERTa, DeBERTa, ...)")
    return model.to(resolve_device(device)).eval(), tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str,
               metric: str | None = None, max_length: int | None = None, pooling: str | None = None,
               training_state: dict | None = None) -> str:
    """Save as a sentence-transformers folder (Transformer + Pooling, similarity_fn_name = metric).

    Written into `path.tmp` and then swapped in, so a crash leaves the old folder or the new one.
    `training_state` (optimizer, scheduler, step, RNG) is saved with it as training_state.pt.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    metric, max_length = metric or settings.metric, max_length or settings.max_length
    pooling = pooling or settings.pooling
    tmp, old = path.rstrip("/") + ".tmp", path.rstrip("/") + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # Let sentence-transformers write its own module files around the saved encoder.
    transformer = Transformer(tmp, max_seq_length=max_length)
    pooler = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
    SentenceTransformer(modules=[transformer, pooler], similarity_fn_name=metric, device="cpu").save(tmp)
    if training_state is not None:  # inside the same swap, so weights and state always match
        torch.save(training_state, os.path.join(tmp, "training_state.pt"))
    _fsync_tree(tmp)  # on disk before the swap: a power cut cannot leave a new folder of empty files
    if os.path.exists(path):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _fsync_tree(folder: str) -> None:
    for d, _, files in os.walk(folder):
        for name in [*files, "."]:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def recover_interrupted_save(path: str) -> None:
    """save_model swaps folders with two renames (path -> path.old, path.tmp -> path); a kill between
    them leaves only path.old, the previous complete save: put it back."""
    path = path.rstrip("/")
    if not os.path.exists(path) and os.path.isdir(path + ".old"):
        os.replace(path + ".old", path)


def short_name(path: str) -> str:
    """A model's name for tables: the packaged MiniLM by its name, a folder by its last two parts."""
    if os.path.abspath(path) == os.path.abspath(settings._packaged_minilm()):
        return "all-MiniLM-L6-v2"
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-2:]) if os.path.isdir(path) else path


def saved_pooling(path: str) -> str | None:
    """The pooling a sentence-transformers folder was saved with (new or old config format), if any."""
    file = os.path.join(path, "1_Pooling", "config.json")
    c = json.load(open(file, encoding="utf-8")) if os.path.exists(file) else {}
    return c.get("pooling_mode") or ("cls" if c.get("pooling_mode_cls_token") else
                                     "mean" if c.get("pooling_mode_mean_tokens") else None)


# ----------------------------------------------------------------------------------------------
# Encoding


def resolve_device(device: str | None = None) -> torch.device:
    device = device or settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def autocast(device: torch.device, precision: str | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: bf16 where supported ('auto'), fp16 on CUDA, or none."""
    precision = precision or settings.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ModelError("setting 'precision': fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, tokens, dim] -> [batch, dim]: the first ([CLS]) token, or the mean over real tokens."""
    if pooling == "cls":
        return last_hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed(model: PreTrainedModel, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """Forward one tokenized batch and pool it; used with grad by training, without by encode()."""
    out = model(**batch)
    return pool(out.last_hidden_state, batch["attention_mask"], pooling)


@torch.inference_mode()
def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
           batch_size: int | None = None, max_length: int | None = None, pooling: str | None = None,
           precision: str | None = None, show_progress: bool | None = None) -> np.ndarray:
    """Embed texts: float32 array [len(texts), dim], in input order.

    Texts are tokenized once, sorted by token length (so each batch pads only to its own longest
    text), and run without grad under autocast.
    """
    batch_size, max_length = batch_size or settings.encode_batch_size, max_length or settings.max_length
    pooling = pooling or settings.pooling
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    show = len(texts) > 5 * batch_size if show_progress is None else show_progress
    with autocast(device, precision):
        for start in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not show, leave=False):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out[idx] = embed(model, batch, pooling).float().cpu().numpy()
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------
# Ranking (validation and the benchmark's rank tasks share it)


def block_rows(n_candidates: int, memory_mb: float | None = None) -> int:
    """Query rows per block so that a block's temporaries, about 3 arrays of [rows, n_candidates] x 8
    bytes (similarities, a copy or comparison, indices), stay under `memory_mb` (settings.score_memory_mb)."""
    memory_mb = memory_mb or settings.score_memory_mb
    return max(1, int(memory_mb * 2**20 // (24 * max(n_candidates, 1))))


def similarity_blocks(queries: np.ndarray, candidates: np.ndarray, metric: str, block: int | None = None
                      ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, similarities [rows, n_candidates]) for `block` queries at a time (default: block_rows,
    bounded by settings.score_memory_mb): memory is the embeddings plus one block, never
    [n_queries, n_candidates]. The candidates are prepared once, not per block. Either input may be a
    scipy sparse matrix (the TF-IDF baseline)."""
    block = block or block_rows(candidates.shape[0])
    c = _prepare(candidates, metric)
    for s in range(0, queries.shape[0], block):
        yield s, _similarity(_prepare(queries[s:s + block], metric), c, metric)


def partner_ranks(queries: np.ndarray, candidates: np.ndarray, targets: np.ndarray | None = None,
                  metric: str = "euclidean", block: int | None = None) -> np.ndarray:
    """1-based rank of each query's true candidate (`targets[i]`, default i) among all candidates.

    rank = 1 + (candidates strictly closer) + half the other candidates at exactly the same score,
    so a constant model scores the chance level (n+1)/2, not 1. Scored in blocks (similarity_blocks).
    """
    targets = np.arange(queries.shape[0]) if targets is None else np.asarray(targets)
    ranks = np.empty(queries.shape[0], dtype=np.float64)
    for s, sim in similarity_blocks(queries, candidates, metric, block):
        true = sim[np.arange(len(sim)), targets[s:s + len(sim)]][:, None]
        better = (sim > true).sum(1)
        ties = (sim == true).sum(1) - 1
        ranks[s:s + len(sim)] = 1 + better + 0.5 * ties
    return ranks


def _prepare(x, metric: str) -> tuple:
    """(rows as float64, normalized for cosine; their squared norms [n] for euclidean)."""
    import scipy.sparse as sp

    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"setting 'metric' must be euclidean or cosine, got '{metric}'")
    x = x.astype(np.float64)
    sq = np.asarray(x.multiply(x).sum(1)).ravel() if sp.issparse(x) else (x * x).sum(1)
    if metric == "cosine":
        inv = 1.0 / np.maximum(np.sqrt(sq), 1e-12)
        x = sp.diags(inv) @ x if sp.issparse(x) else x * inv[:, None]
        sq = sq * inv * inv
    return x, sq


def _similarity(q: tuple, c: tuple, metric: str) -> np.ndarray:
    dot = q[0] @ c[0].T
    dot = dot.toarray() if hasattr(dot, "toarray") else np.asarray(dot)
    if metric == "cosine":
        return dot
    return -np.sqrt(np.maximum(q[1][:, None] + c[1][None, :] - 2.0 * dot, 0.0))
