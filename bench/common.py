"""What the bench scripts share: run one side of a comparison in its own child process, its peak memory,
and the smallest cosine between two sides' vectors."""
import multiprocessing as mp
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_in_child(target, *args) -> dict:
    """Run target(*args, queue) in a fresh (spawned) process, so its peak memory is its own; return
    what it put on the queue. A child that dies (import error, out of memory) fails loudly."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:
            if not proc.is_alive():
                raise SystemExit(f"error: {target.__name__} failed in its process (exit code {proc.exitcode})")
    proc.join()
    return result


def peak_mb() -> float:
    """This process's peak memory in MiB: CUDA's allocated peak on a GPU, else the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def min_cosine(a, b) -> float:
    """The smallest cosine between rows i of a and b ([n, dim] arrays): how far two sides' vectors part."""
    import numpy as np

    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
