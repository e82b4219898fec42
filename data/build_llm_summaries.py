"""Ship the LLM summaries of ../shared/data/arxiv_llm_summaries.jsonl as data/arxiv_llm_summaries.jsonl.

    python data/build_llm_summaries.py [--shared ../shared/data]

The source holds 4,944 arXiv papers x 4 LLM-written one-sentence summaries (data/README.md: who wrote
them, under which rules). This copies every record as it is, adds the paper's title from
arxiv_pool.jsonl.gz (so that the file says which paper each line summarizes, and the tests can check
by title that no training paper is in a benchmark or validation corpus), and checks before writing:
- every summary passes the project's own summary_problem (words, sentences, banned phrases, digits,
  title, 8-word runs copied from the abstract, near-duplicate siblings);
- no paper is in data/arxiv_benchmark.jsonl, data/arxiv_val.jsonl, ../shared/data/sci_abstracts_dev.jsonl or
  medical_abstracts.jsonl, by id or by normalized title.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
OUT = os.path.join(HERE, "arxiv_llm_summaries.jsonl")
HELD_OUT = ("arxiv_benchmark.jsonl", "arxiv_val.jsonl")  # in data/
HELD_OUT_SHARED = ("sci_abstracts_dev.jsonl", "medical_abstracts.jsonl")


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def read_jsonl(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    from generate_train_summaries import summary_problem

    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared", "data"))
    a = p.parse_args()
    pool = {r["id"]: r for r in read_jsonl(os.path.join(a.shared, "arxiv_pool.jsonl.gz"))}
    held = [r for name in HELD_OUT for r in read_jsonl(os.path.join(HERE, name))]
    held += [r for name in HELD_OUT_SHARED for r in read_jsonl(os.path.join(a.shared, name))]
    held_ids, held_titles = {r["id"] for r in held}, {norm(r["title"]) for r in held}
    out = []
    for rec in read_jsonl(os.path.join(a.shared, "arxiv_llm_summaries.jsonl")):
        paper = pool[rec["id"]]
        assert rec["id"] not in held_ids and norm(paper["title"]) not in held_titles, rec["id"]
        for i, text in enumerate(rec["summaries"]):
            problem = summary_problem(text, paper, rec["summaries"][:i])
            assert problem is None, (rec["id"], i, problem)
        out.append({"id": rec["id"], "title": paper["title"], **{k: v for k, v in rec.items() if k != "id"}})
    with open(OUT, "w", encoding="utf-8") as f:
        for rec in out:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(out)} papers, {sum(len(r['summaries']) for r in out)} summaries; all checks passed")


if __name__ == "__main__":
    main()
