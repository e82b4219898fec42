"""Encoding speed: our model.encode() against SentenceTransformer.encode(), at the same precision.

    python bench/encode.py [--repeats=3] [--n_texts=256] [--encode_batch_size=64] [--benchmark_max_length=0]
                           [--precision=auto] [--device=auto] [--encoder_checkpoint=...]

All sides get the encoder (default the packaged all-MiniLM-L6-v2 as shipped: mean pooling, Normalize,
its max_seq_length 256 unless --benchmark_max_length is given), the same real texts (title + abstract
of the first `n_texts` papers of the default benchmark corpus) and batch size. Each side runs in its
own child process (so peak memory, RSS or CUDA, is its own), warms up, then encodes all texts
`repeats` times; the median time counts.

Sides, at the precision model.resolve_precision picks here (printed: fp32 on a CPU without native
bf16; bf16 on a GPU or where bf16 is native), and also at fp32 when that is not fp32 (both precisions
where both are native): ours as the benchmark scores (model.for_scoring: weights in that precision;
length-sorted batches, inference mode) and sentence-transformers at its best on this hardware at that
precision (its defaults; in bf16 the model loaded with model_kwargs={"dtype": torch.bfloat16}).
The last lines are the speed ratios and the smallest cosine between the two sides' vectors.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402
import settings  # noqa: E402
from common import min_cosine, peak_mb, run_in_child  # noqa: E402


def texts(n: int) -> list[str]:
    from load_data import load_corpus

    return [p["title"] + " " + p["abstract"] for p in load_corpus(settings.benchmark_corpus_file)[:n]]


def run_side(side: str, precision: str, cfg: dict, repeats: int, n: int, queue) -> None:
    import numpy as np
    import torch

    settings.update(**cfg)
    data, path, max_length = texts(n), settings.encoder_checkpoint, settings.benchmark_max_length or None
    if side.startswith("ours"):
        from semcse.model import encode, for_scoring, load_model

        model, tok = load_model(path, settings.device)
        model = for_scoring(model, precision)
        fn = lambda xs: encode(model, tok, xs, settings.encode_batch_size, max_length, precision,  # noqa: E731
                               show_progress=False)
    else:
        from sentence_transformers import SentenceTransformer

        from semcse.model import resolve_device

        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if precision == "bf16" else {}
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
    queue.put({"seconds": statistics.median(times), "peak_mb": peak_mb(), "n": len(data),
               "emb": np.asarray(torch.as_tensor(emb).float(), dtype=np.float32)})


def main(repeats: int = 3, n_texts: int = 256) -> None:
    """Time ours against SentenceTransformer.encode() at the resolved precision (and fp32 where that is not fp32)."""
    import torch

    from semcse.model import resolve_device, resolve_precision

    cfg = settings.resolved().as_dict()
    chosen = resolve_precision(resolve_device(settings.device).type, settings.precision)
    precisions = [chosen] + (["fp32"] if chosen != "fp32" else [])
    device = ("cuda" if torch.cuda.is_available() else
              f"cpu ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__})")
    print(f"encode: the first {n_texts} title+abstract texts of {settings.benchmark_corpus_file}, batch "
          f"{settings.encode_batch_size}, max_length {settings.benchmark_max_length or 'the model’s own'}, "
          f"device {device}")
    print("| side | precision | texts/s | peak memory (MiB) |\n|---|---|---|---|", flush=True)
    r = {}
    for p in precisions:
        for side, label in (("ours", "ours: model.for_scoring + model.encode()"), ("st", "SentenceTransformer.encode()")):
            r[side, p] = run_in_child(run_side, side, p, cfg, repeats, n_texts)
            print(f"| {label} | {p} | {r[side, p]['n'] / r[side, p]['seconds']:.1f} | {r[side, p]['peak_mb']:.0f} |",
                  flush=True)
    for p in precisions:
        print(f"{p}: ratio (ours / sentence-transformers, texts per second) "
              f"{r['st', p]['seconds'] / r['ours', p]['seconds']:.2f}x; min cosine between their vectors "
              f"{min_cosine(r['ours', p]['emb'], r['st', p]['emb']):.6f}")


if __name__ == "__main__":
    cli.cli(main, flags={"repeats": 3, "n_texts": 256})
