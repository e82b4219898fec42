"""Encoding speed: our model.encode() against SentenceTransformer.encode(), same model and texts.

    python bench/encode.py [--repeats=3] [--max_length=256] [--encode_batch_size=64]

Both sides get the packaged all-MiniLM-L6-v2 with its native mean pooling, the same real
abstracts (the default corpus: ACLSum titles + abstracts), batch size and max length. Each side
runs in its own child process (so peak memory, RSS or CUDA, is its own), warms up, then encodes
all texts `repeats` times; the median time counts. Ours uses its defaults (length-sorted batches,
inference mode, bf16 autocast where supported); sentence-transformers its defaults (fp32).
The last line is the speed ratio.
"""
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import settings  # noqa: E402
from common import run_in_child  # noqa: E402


def texts() -> list[str]:
    from load_data import ensure_default_data, load_corpus

    paths = ensure_default_data()
    papers = load_corpus(paths["train_corpus"]) + load_corpus(paths["benchmark_corpus"])
    return [p["title"] + " " + p["abstract"] for p in papers]


def run_side(side: str, cfg: dict, repeats: int, queue) -> None:
    import numpy as np
    import torch

    settings.update(**cfg)
    data, path = texts(), settings._packaged_minilm()
    if side == "ours":
        from model import encode, load_model

        model, tok = load_model(path)
        fn = lambda xs: encode(model, tok, xs, pooling="mean", show_progress=False)  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        from model import resolve_device

        st = SentenceTransformer(path, device=str(resolve_device()))
        st.max_seq_length = settings.max_length
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
               "emb": np.asarray(emb, dtype=np.float32)})


if __name__ == "__main__":
    import numpy as np
    import torch

    flags = settings.parse_command_line(flags={"repeats": 3})
    if "--max_length" not in " ".join(sys.argv):
        settings.update(max_length=256)  # abstracts are long: 128 would cut most of them
    ours = run_in_child(run_side, "ours", settings.resolved(), flags["repeats"])
    st = run_in_child(run_side, "sentence-transformers", settings.resolved(), flags["repeats"])
    a, b = ours["emb"], st["emb"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"
    print(f"encode: {ours['n']} abstracts, batch {settings.encode_batch_size}, max_length {settings.max_length}, "
          f"precision {settings.precision}, device {device}")
    print("| side | texts/s | peak memory (MiB) |\n|---|---|---|")
    for name, r in (("ours: model.encode()", ours), ("SentenceTransformer.encode()", st)):
        print(f"| {name} | {r['n'] / r['seconds']:.1f} | {r['peak_mb']:.0f} |")
    print(f"embeddings: min cosine ours vs sentence-transformers = {cos.min():.5f}")
    print(f"ratio (ours / sentence-transformers, texts per second): {st['seconds'] / ours['seconds']:.2f}x")
