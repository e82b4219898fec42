"""What the bench scripts share: run one side of a comparison in its own child process."""
import multiprocessing as mp
import os
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
