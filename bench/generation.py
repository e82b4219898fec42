"""Requests per second of the generation pipeline against our fake OpenAI server, by concurrency.

    python bench/generation.py                     # latency 0 and 50 ms per request, concurrency 1 and 32
    python bench/generation.py --papers=400 --latencies=0.1 --concurrency=1,8,32

The server runs in its own process (tests/fake_openai_server.py) so that it does not share our GIL.
Measures the whole path of generate_search_queries: openai client over HTTP, JSON validation,
one flushed and fsynced JSONL line per paper, and the final compaction.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import generate_search_queries  # noqa: E402
import settings  # noqa: E402


def bench(papers: int = 200, latencies: tuple[float, ...] = (0.0, 0.05),
          concurrency: tuple[int, ...] = (1, 32)) -> list[dict]:
    """One row per (latency, concurrency): requests/s of a full generation run."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w") as f:
            for i in range(papers):
                f.write(json.dumps({"id": f"p{i:05d}", "title": f"Paper {i}",
                                    "abstract": f"We study problem {i} with a new method and find it works."}) + "\n")
        for latency in latencies:
            server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "fake_openai_server.py"),
                                       "--port=0", f"--latency={latency}"], stdout=subprocess.PIPE, text=True)
            try:
                base_url = server.stdout.readline().split(" on ")[1].strip()
                for conc in concurrency:
                    out = os.path.join(tmp, f"q_{latency}_{conc}.jsonl")
                    cfg = settings.resolved(llm_base_url=base_url, query_corpus_file=corpus, queries_file=out,
                                            llm_concurrency=conc, llm_http_retries=0, llm_retries=0)
                    start = time.perf_counter()
                    with contextlib.redirect_stderr(io.StringIO()):  # no progress bar in the table
                        stats = generate_search_queries.generate_queries(cfg)
                    seconds = time.perf_counter() - start
                    assert stats["done"] == papers, stats
                    rows.append({"latency_s": latency, "concurrency": conc, "requests": papers,
                                 "seconds": round(seconds, 2), "requests_per_s": round(papers / seconds, 1)})
                    print(f"latency {latency * 1000:4.0f} ms  concurrency {conc:3d}: {papers} requests in "
                          f"{seconds:6.2f}s = {papers / seconds:7.1f} requests/s", flush=True)
            finally:
                server.terminate()
                server.wait()
    return rows


if __name__ == "__main__":
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    bench(papers=int(opts.get("papers", 200)),
          latencies=tuple(float(x) for x in opts.get("latencies", "0,0.05").split(",")),
          concurrency=tuple(int(x) for x in opts.get("concurrency", "1,32").split(",")))
