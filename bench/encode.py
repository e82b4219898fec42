"""Encoding speed: our model.encode() against SentenceTransformer.encode() in fp32 and in bf16.

    python bench/encode.py [--repeats=3] [--n_texts=256] [--encode_batch_size=64] [--benchmark_max_length=0]

All sides get the packaged all-MiniLM-L6-v2 as shipped (mean pooling, Normalize, its max_seq_length
256 unless --benchmark_max_length is given), the same real texts (title + abstract of the first
`n_texts` papers of the default benchmark corpus) and batch size. Each side runs in its own child
process (so peak memory, RSS or CUDA, is its own), warms up, then encodes all texts `repeats` times;
the median time counts. Ours runs twice: as training's validation runs it (fp32 weights) and as the
benchmark scores (model.for_scoring: bf16 weights where supported). Ours uses its defaults
(length-sorted batches, inference mode, bf16 autocast where supported). The peers: sentence-transformers
with its defaults (fp32), and sentence-transformers at its best on this hardware, the model loaded in
bf16 (model_kwargs={"dtype": torch.bfloat16}).
The last lines are the speed ratios.
"""
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402
import settings  # noqa: E402
from common import run_in_child  # noqa: E402

SIDES = {"ours": "ours: model.encode() (fp32 weights, bf16 autocast; training's validation)",
         "ours_scoring": "ours: model.encode() after model.for_scoring() (the benchmark: bf16 weights)",
         "st_fp32": "SentenceTransformer.encode(), fp32",
         "st_bf16": "SentenceTransformer.encode(), model in bf16"}


def texts(n: int) -> list[str]:
    from load_data import load_corpus

    return [p["title"] + " " + p["abstract"] for p in load_corpus(settings.benchmark_corpus_file)[:n]]


def run_side(side: str, cfg: dict, repeats: int, n: int, queue) -> None:
    import numpy as np
    import torch

    settings.update(**cfg)
    data, path, max_length = texts(n), settings.encoder_checkpoint, settings.benchmark_max_length or None
    if side.startswith("ours"):
        from semcse.model import encode, for_scoring, load_model

        model, tok = load_model(path, settings.device)
        model = for_scoring(model, settings.precision) if side == "ours_scoring" else model
        fn = lambda xs: encode(model, tok, xs, settings.encode_batch_size, max_length, settings.precision,
                             show_progress=False)  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        from semcse.model import resolve_device

        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if side == "st_bf16" else {}
        st = SentenceTransformer(path, device=str(resolve_device(settings.device)), **kwargs)
        st.max_seq_length = max_length or st.max_seq_length
        fn = lambda xs: st.encode(xs, batch_size=settings.encode_batch_size, show_progress_bar=False)  # noqa: E731
    fn(data[:64])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        emb = fn(data)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    queue.put({"seconds": statistics.median(times), "peak_mb": peak / 2**20, "n": len(data),
               "emb": np.asarray(torch.as_tensor(emb).float(), dtype=np.float32)})


def min_cosine(a, b) -> float:
    import numpy as np

    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


if __name__ == "__main__":
    import torch

    flags = cli.parse_command_line(flags={"repeats": 3, "n_texts": 256})
    cfg = settings.resolved().as_dict()
    r = {side: run_in_child(run_side, side, cfg, flags["repeats"], flags["n_texts"]) for side in SIDES}
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"
    print(f"encode: {r['ours']['n']} title+abstract texts of {settings.benchmark_corpus_file}, batch "
          f"{settings.encode_batch_size}, max_length {settings.benchmark_max_length or 'the model’s own (256)'}, "
          f"device {device}")
    print("| side | texts/s | peak memory (MiB) |\n|---|---|---|")
    for side, label in SIDES.items():
        print(f"| {label} | {r[side]['n'] / r[side]['seconds']:.1f} | {r[side]['peak_mb']:.0f} |")
    for ours in ("ours", "ours_scoring"):
        for side in ("st_fp32", "st_bf16"):
            print(f"embeddings: min cosine {ours} vs {side} = {min_cosine(r[ours]['emb'], r[side]['emb']):.5f}")
    for ours in ("ours", "ours_scoring"):
        for side in ("st_fp32", "st_bf16"):
            print(f"ratio ({ours} / {side}, texts per second): {r[side]['seconds'] / r[ours]['seconds']:.2f}x")
