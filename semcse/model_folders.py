"""Model folders: find a model (a local folder, or a Hugging Face name in the local cache), check what is
in it before transformers fills a gap silently (weights of another architecture, a missing or damaged
tokenizer), load its encoder once, read the scoring a folder records, and name a save that failed for
want of disk space. model.py builds the pipelines on top."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Transformer
from transformers import AutoModel, PreTrainedModel

import settings
from semcse import files

# Files that hold a tokenizer's vocabulary; without one, transformers builds a 5-token tokenizer that
# maps every word to [UNK] (and scores chance) instead of failing.
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "spm.model", "tokenizer.model", "bpe.codes")
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")


class ModelError(settings.UserError, ValueError):
    """A model that cannot be loaded or used; the message names the path or name."""


def find_model(name_or_path: str, offline: bool = True) -> str:
    """The folder of a model: a local folder, or a Hugging Face name in the local cache (downloaded only
    when not `offline`); ModelError naming it when there is none. Loads nothing."""
    return _local_folder(name_or_path, offline)


def _local_folder(name: str, offline: bool) -> str:
    """A local folder, or a Hugging Face name resolved to its folder in the cache (downloaded only
    when `offline` is False: local_files_only per call, so the setting holds for this call alone)."""
    files.recover_interrupted_folder(name)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ModelError(f"{name}: is a file, not a model folder")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path: a hub name is "org/name" at most
        raise ModelError(f"{name}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=offline,
                                 ignore_patterns=["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"])
    except Exception:  # noqa: BLE001 -- not cached, bad repo id, no network: one answer
        raise ModelError(
            f"model '{name}' is not a local folder and not in the Hugging Face cache; this project "
            f"never downloads at run time: fetch it once elsewhere (huggingface-cli download {name}) "
            f"and pass its folder, or set --offline=false on a machine with internet") from None


def module_list(folder: str, label: str) -> list[dict] | None:
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


def load_encoder(folder: str, label: str, trust_remote_code: bool) -> PreTrainedModel:
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


def load_modules(folder: str, label: str, trust_remote_code: bool) -> SentenceTransformer:
    """All the modules of a sentence-transformers folder (Pooling, Dense, Normalize, ...)."""
    try:
        return SentenceTransformer(folder, device="cpu", local_files_only=True,
                                   trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 -- a damaged module folder fails in many ways
        raise ModelError(f"{label}: cannot load its sentence-transformers modules ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]})") from None


def plain_transformer(folder: str, max_length: int, label: str) -> Transformer:
    """The Transformer module of a plain encoder folder (its tokenizer loaded here; the encoder is reused)."""
    try:
        return Transformer(folder, max_seq_length=max_length)
    except Exception as e:  # noqa: BLE001 -- a damaged tokenizer fails in many ways inside transformers
        raise ModelError(f"{label}: cannot load its tokenizer ({type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]})") from None


def check_tokenizer_files(folder: str, label: str) -> None:
    """A vocabulary, and tokenizer files that are JSON objects: a damaged one fails inside transformers with
    a message that names neither the folder nor the file."""
    names = os.listdir(folder)
    if not any(f in VOCABULARY_FILES or f.endswith(".model") for f in names):
        raise ModelError(f"{label}: model folder has no tokenizer vocabulary ({', '.join(VOCABULARY_FILES[:3])}, "
                         f"...): every word would be [UNK]")
    for name in TOKENIZER_JSON:
        if name in names and not isinstance(_read_json(os.path.join(folder, name)), dict):
            raise ModelError(f"{os.path.join(folder, name)}: is damaged (expected a JSON object)")


def check_tokenizer(model: SentenceTransformer, encoder: PreTrainedModel, label: str) -> None:
    """The tokenizer must fit the embedding matrix: no id beyond it, and most of it reachable."""
    n, rows = len(model.tokenizer), encoder.get_input_embeddings().num_embeddings
    if n > rows or n < rows // 2:
        raise ModelError(f"{label}: its tokenizer has {n} tokens for {rows} token embeddings "
                         f"(a tokenizer of another model?)")


@contextlib.contextmanager
def reusing(encoder: PreTrainedModel):
    # sentence-transformers' Transformer module loads the weights itself; hand it the encoder already
    # loaded and checked above, so the weights are read once and our checks hold for what is used.
    original = Transformer._load_model
    Transformer._load_model = lambda self, *args, **kwargs: encoder
    try:
        yield
    finally:
        Transformer._load_model = original


def position_limit(encoder: PreTrainedModel) -> int:
    """Longest input the position embeddings allow (RoBERTa-like models reserve padding_idx + 1)."""
    limit = getattr(encoder.config, "max_position_embeddings", None) or 512
    positions = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    if getattr(positions, "padding_idx", None) is not None:
        limit -= positions.padding_idx + 1
    return limit


def is_sentence_transformers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "modules.json"))


def saved_scoring(name_or_path: str, offline: bool = True) -> dict:
    """pooling, metric and normalization of a model folder from its files, without loading weights: a
    sentence-transformers folder's 1_Pooling, similarity_fn_name (cosine when unset, as
    sentence-transformers) and Normalize module; a plain encoder: cls, euclidean, not normalized."""
    folder = _local_folder(name_or_path, offline)
    if not is_sentence_transformers_folder(folder):
        return {"pooling": "cls", "metric": "euclidean", "normalized": False}
    modules = module_list(folder, name_or_path)
    pool = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    c = _as_dict(_read_json(os.path.join(folder, pool, "config.json")) if pool else {})
    pooling = c.get("pooling_mode") or ("cls" if c.get("pooling_mode_cls_token") else
                                        "mean" if c.get("pooling_mode_mean_tokens") else "none")
    metric = _as_dict(_read_json(os.path.join(folder, "config_sentence_transformers.json"))).get("similarity_fn_name")
    normalized = any(m["type"].endswith("Normalize") for m in modules)
    return {"pooling": pooling, "metric": metric or "cosine", "normalized": normalized}


def _read_json(path: str) -> Any:
    """The JSON in `path` ({} if there is none); ModelError naming the file if it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: is not valid JSON (damaged model folder?)") from None


def _as_dict(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else {}



def disk_problem(e: Exception, path: str, needed: int) -> str | None:
    """What a failed save says about the disk ("No space left on device; 1.2 MB free on its disk, the model
    needs about 90.3 MB"), or None when it is no disk problem. torch.save reports a full disk only as
    "unexpected pos ..." and safetensors as "... (os error 28)": the free space tells."""
    code = e.errno if isinstance(e, OSError) else None
    found = re.search(r"os error (\d+)", str(e))
    code = code or (int(found.group(1)) if found else None)
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if code:
        reason = os.strerror(code)
    elif isinstance(e, RuntimeError) and free < needed:
        reason = "out of disk space"
    else:
        return None
    return f"{reason}; {_megabytes(free)} free on its disk, the model needs about {_megabytes(needed)}"


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"
