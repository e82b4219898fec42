"""Training data at the paper's scale: 350k papers x 4 summaries (synthetic, ~25 words each), loaded
two ways, each in a fresh process: load time, peak RSS above the imports, and the time to fetch one
batch of 32 papers' summaries. (A third way, a byte-offset index that re-read each batch from the
file, was training's loader until measured here; its figures are in bench/RESULTS.md.)

- lists: today's load_data.load_summaries (every line checked, each paper's summaries in a list)
- arrow: Hugging Face `datasets` (JSON -> memory-mapped Arrow in a cache folder, then rows by index)

    python bench/data_loading.py [--papers=350000]
"""
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402

WORDS = ("graph speech vision parsing translation retrieval summary dialogue sentiment entity model method "
         "results data training learning neural network task benchmark corpus language").split()


def write_file(path: str, papers: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(papers):
            summaries = [" ".join(rng.choices(WORDS, k=25)) for _ in range(4)]
            f.write(json.dumps({"id": f"p{i}", "summaries": summaries}) + "\n")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(way: str, path: str) -> dict:
    if way == "arrow":
        import datasets
        datasets.disable_progress_bars()
    import load_data
    base, start = rss_mb(), time.time()
    if way == "lists":
        data = load_data.load_summaries(path)
        get, ids = data.__getitem__, list(data)
    else:
        cache = tempfile.mkdtemp()
        ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache)
        row = {pid: i for i, pid in enumerate(ds["id"])}
        ids = list(row)

        def get(pid):
            return ds[row[pid]]["summaries"]
    load_s = time.time() - start
    rng = random.Random(1)
    start = time.time()
    for _ in range(50):
        batch = [get(pid) for pid in rng.sample(ids, 32)]
    batch_ms = (time.time() - start) / 50 * 1000
    assert len(batch) == 32
    return {"way": way, "papers": len(ids), "load_s": round(load_s, 1), "rss_mb": round(rss_mb() - base),
            "batch_ms": round(batch_ms, 2)}


def main(papers: int = 350_000, one_way: str = "", path: str = "") -> None:
    """Time each way of reading `papers` x 4 summaries, each in a fresh process (--one_way: that process)."""
    if one_way:
        print(json.dumps(one(one_way, path)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "summaries.jsonl")
        write_file(path, papers)
        print(f"{papers} papers x 4 summaries, {os.path.getsize(path) / 2**20:.0f} MiB")
        print("| way | load (s) | peak RSS above imports (MiB) | one batch of 32 papers (ms) |")
        print("|---|---|---|---|")
        for way in ("lists", "arrow"):
            out = subprocess.run([sys.executable, __file__, f"--one_way={way}", f"--path={path}"], capture_output=True, text=True)
            if out.returncode:
                print(f"| {way} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {way} | {r['load_s']} | {r['rss_mb']} | {r['batch_ms']} |")


if __name__ == "__main__":
    cli.cli(main, flags={"papers": 350_000, "one_way": "", "path": ""})
