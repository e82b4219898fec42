"""Draw the shipped arXiv data once from ../shared/data/arxiv_pool.jsonl.gz (arXiv 2025-26, CC0).

    python data/build_arxiv_data.py [--pool ../shared/data/arxiv_pool.jsonl.gz]

Writes three disjoint, label-stratified samples over the 17 primary categories that have at least
400 papers in the pool (computer science, astrophysics, physics):
- data/arxiv_benchmark.jsonl  90 papers a label (1,530): the default benchmark corpus (all four tasks)
- data/arxiv_train.jsonl      200 papers a label (3,400): the papers whose abstracts the LLM summarizes
- data/arxiv_val.jsonl        20 papers a label (340): held-out training-pool papers whose titles and
                              abstracts validate training (never a benchmark corpus)
Each file lists its papers round-robin over the labels, so that any prefix (a generator stopped
half-way) is still stratified. Papers whose normalized title or abstract also occurs in another
shipped or evaluation set (../shared/data/*.jsonl) are left out first. Seed 0; counts printed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
from collections import defaultdict

SPLITS = (("arxiv_benchmark.jsonl", 90), ("arxiv_train.jsonl", 200), ("arxiv_val.jsonl", 20))
MIN_LABEL_PAPERS = 400
SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pool", default=os.path.join(HERE, "..", "..", "shared", "data", "arxiv_pool.jsonl.gz"))
    a = p.parse_args()
    shared = os.path.dirname(a.pool)
    seen = set()  # normalized titles and abstracts of every evaluation set in shared/data
    for name in ("sci_abstracts_dev.jsonl", "medical_abstracts.jsonl", "scitldr_multi.jsonl"):
        with open(os.path.join(shared, name), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                seen.update({norm(r["title"]), norm(r["abstract"])})
    by_label: dict[str, list[dict]] = defaultdict(list)
    with gzip.open(a.pool, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if norm(r["title"]) in seen or norm(r["abstract"]) in seen:
                continue
            by_label[r["label"]].append({k: r[k] for k in ("id", "title", "abstract", "label", "categories",
                                                           "date", "source")})
    labels = sorted(lab for lab, papers in by_label.items() if len(papers) >= MIN_LABEL_PAPERS)
    rng = random.Random(SEED)
    for lab in labels:
        by_label[lab].sort(key=lambda r: r["id"])  # the pool's order is by date; fix it before shuffling
        rng.shuffle(by_label[lab])
    start = 0
    for name, per_label in SPLITS:
        rows = [by_label[lab][start + i] for i in range(per_label) for lab in labels]  # round-robin
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        start += per_label
        print(f"{name}: {len(rows)} papers, {per_label} a label")
    print("labels:", ", ".join(f"{lab} ({len(by_label[lab])} in pool)" for lab in labels))


if __name__ == "__main__":
    main()
