"""How the four-task benchmark's cost grows with the corpus: time and peak memory at 1k, 5k, 20k papers.

    python bench/benchmark.py [--sizes=1000,5000,20000]

The corpus is the real ACLSum abstracts repeated to size, each copy made distinct by a suffix, with
9 labels assigned round-robin and one query (its title) per paper. To time the *scoring* rather than a
neural encoder, the embedder is cheap and deterministic: TF-IDF projected to 384 dimensions by a fixed
random matrix. Each size runs in its own process (so peak memory is its own). Exact ranks and kNN are
computed in blocks of rows sized so that a block's temporaries stay under settings.score_memory_mb
(similarity.block_rows), not O(n^2). The peer is the naive full-matrix computation, whose size we print
as the memory it would need.
"""
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402
import settings  # noqa: E402
from common import run_in_child  # noqa: E402


class Projected:
    """TF-IDF -> fixed Gaussian projection to 384 dims: real-text-like vectors at almost no cost."""

    def __init__(self, corpus: list[dict]):
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.name, self.role, self.sep, self.params, self.path = "tfidf-proj384", "", " ", None, ""
        self.metric = settings.metric if settings.metric != "auto" else "euclidean"
        self.scoring = {"pooling": "tf-idf projected", "similarity": self.metric, "normalized": False, "max_length": None}
        self.tfidf = TfidfVectorizer(sublinear_tf=True).fit([p["title"] + " " + p["abstract"] for p in corpus])
        self.proj = np.random.default_rng(0).standard_normal((len(self.tfidf.vocabulary_), 384)).astype(np.float32)
        self.key = {"bench": "tfidf-proj384"}

    def embed(self, texts: list[str]):
        return (self.tfidf.transform(texts) @ self.proj).astype("float32")


def one_size(n: int, cfg: dict, queue) -> None:
    import tempfile

    from semcse import benchmark as B
    from load_data import ensure_default_data, load_corpus

    settings.update(**cfg)
    paths = ensure_default_data(settings.data_dir)
    base = load_corpus(paths["train_corpus"]) + load_corpus(paths["benchmark_corpus"])
    corpus = [{"id": f"{i}", "title": f"{base[i % len(base)]['title']} (variant {i // len(base)})",
               "abstract": f"{base[i % len(base)]['abstract']} Variant {i // len(base)}.", "label": f"c{i % 9}"}
              for i in range(n)]
    queries = [{"id": p["id"], "query": p["title"]} for p in corpus]
    emb = Projected(corpus)
    out = tempfile.mkdtemp()
    data = {"corpus_file": "synthetic", "corpus_sha256": str(n), "n_papers": n, "queries_file": "synthetic",
            "queries_sha256": str(n)}
    cfg = settings.resolved(embedding_cache_dir="")
    started = time.perf_counter()
    result = B.score_model(emb, corpus, queries, data, cfg, out, overwrite=True)
    queue.put({"n": n, "seconds": time.perf_counter() - started,
               "task_seconds": {t: r["seconds"] for t, r in result["tasks"].items()},
               "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main(sizes: str = "1000,5000,20000") -> None:
    """Score a cheap embedder on growing synthetic corpora and print time and peak memory per size."""
    rows = [run_in_child(one_size, int(n), settings.resolved().as_dict()) for n in sizes.split(",")]
    print(f"\nbenchmark scoring, metric {settings.metric if settings.metric != 'auto' else 'euclidean'}, k={settings.knn_k}, cpu ({os.cpu_count()} cores)")
    print("| papers | total s | title-abstract s | segments s | query s | clustering s | peak RSS MiB | "
          "full n x n float64 matrix MiB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["task_seconds"]
        print(f"| {r['n']} | {r['seconds']:.1f} | {t['title_abstract']:.1f} | {t['abstract_segments']:.1f} | "
              f"{t['query']:.1f} | {t['clustering']:.1f} | {r['peak_mb']:.0f} | {r['n'] ** 2 * 8 / 2**20:.0f} |")
    a, b = rows[0], rows[-1]
    print(f"growth {a['n']} -> {b['n']} papers ({b['n'] / a['n']:.0f}x): time x{b['seconds'] / a['seconds']:.1f}, "
          f"peak memory x{b['peak_mb'] / a['peak_mb']:.1f} (a full n x n matrix would grow x{(b['n'] / a['n']) ** 2:.0f})")


if __name__ == "__main__":
    cli.cli(main, flags={"sizes": "1000,5000,20000"})
