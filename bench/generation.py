"""Throughput of LLM generation.

Against our fake OpenAI server (requests/s of the pipeline itself, by concurrency):
    python bench/generation.py                     # latency 0 and 50 ms per request, concurrency 1 and 32
    python bench/generation.py --papers=400 --latencies=0.1 --concurrency=1,8,32

Against a real server (e.g. `python serve_llm.py --slots=4`): the same papers summarized with 1 request
in flight, then with --slots in flight, in one run; papers/min and completion tokens/s of each:
    python bench/generation.py --base_url=http://127.0.0.1:8000/v1 --papers=8 [--slots=4]
        [--model=qwen2.5-coder-1.5b-instruct-q4_k_m] [--corpus=data/arxiv_train.jsonl]

The fake server runs in its own process (tests/fake_openai_server.py) so that it does not share our GIL.
Both measure the whole path: openai client over HTTP, JSON validation, one flushed and fsynced JSONL
line per paper, and the final compaction.
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
import generate_train_summaries  # noqa: E402
import settings  # noqa: E402
from semcse import cli  # noqa: E402
from load_data import iter_corpus, iter_jsonl  # noqa: E402


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


def bench_server(base_url: str, papers: int = 8, slots: int = 4, model: str = "qwen2.5-coder-1.5b-instruct-q4_k_m",
                 corpus: str = "data/arxiv_train.jsonl", retries: int = 1) -> list[dict]:
    """Summaries of the first `papers` papers of `corpus` from the server at base_url, with 1 then `slots`
    requests in flight (fresh output files, so nothing is skipped): one row per concurrency."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sample = os.path.join(tmp, "papers.jsonl")
        with open(sample, "w", encoding="utf-8") as f:
            for paper, _ in zip(iter_corpus(corpus), range(papers)):
                f.write(json.dumps(paper, ensure_ascii=False) + "\n")
        for conc in dict.fromkeys((1, slots)):
            out = os.path.join(tmp, f"s_{conc}.jsonl")
            cfg = settings.resolved(llm_base_url=base_url, llm_model=model, generation_corpus_file=sample,
                                    generated_summaries_file=out, llm_concurrency=conc, llm_retries=retries,
                                    llm_timeout=900.0)  # 1.5B on 2 CPU cores: a long answer can take minutes
            start = time.perf_counter()
            stats = generate_train_summaries.generate_summaries(cfg)
            seconds = time.perf_counter() - start
            tokens = sum(_completion_tokens(path) for path in (out, out.replace(".jsonl", ".failures.jsonl")))
            usable = sum(len(r["summaries"]) for _, r in iter_jsonl(out)) if os.path.exists(out) else 0
            rows.append({"concurrency": conc, "papers": papers, "done": stats["done"], "failed": stats["failed"],
                         "seconds": round(seconds, 1), "papers_per_min": round(60 * papers / seconds, 2),
                         "usable_summaries_per_min": round(60 * usable / seconds, 2),
                         "completion_tokens_per_s": round(tokens / seconds, 1)})
    print("| in flight | papers | done | failed | seconds | papers/min | usable summaries/min | completion tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    return rows


def _completion_tokens(path: str) -> int:
    """Completion tokens of every attempt, as the server reported them (0 where it did not)."""
    if not os.path.exists(path):
        return 0
    return sum((r.get("usage") or {}).get("completion_tokens") or 0 for _, r in iter_jsonl(path))


def main(papers: int = 0, latencies: str = "0,0.05", concurrency: str = "1,32", base_url: str = "", slots: int = 4,
         model: str = "qwen2.5-coder-1.5b-instruct-q4_k_m", corpus: str = os.path.join(ROOT, "data", "arxiv_train.jsonl")
         ) -> None:
    """The fake-server benchmark, or with --base_url a real server's (papers: 200 / 8 when 0)."""
    if base_url:
        bench_server(base_url, papers=papers or 8, slots=slots, model=model, corpus=corpus)
        return
    bench(papers=papers or 200, latencies=tuple(float(x) for x in latencies.split(",")),
          concurrency=tuple(int(x) for x in concurrency.split(",")))


if __name__ == "__main__":
    cli.cli(main, flags={"papers": 0, "latencies": "0,0.05", "concurrency": "1,32", "base_url": "", "slots": 4,
                         "model": "qwen2.5-coder-1.5b-instruct-q4_k_m",
                         "corpus": os.path.join(ROOT, "data", "arxiv_train.jsonl")})
