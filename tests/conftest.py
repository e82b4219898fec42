"""Shared fixtures: a tiny random BERT (built here, nothing downloaded) and small data files."""
from __future__ import annotations

import json
import os
import sys

import pytest
from hypothesis import settings as hypothesis_settings

# CI runs the property tests on Hypothesis' fixed seed, so a submission passes or fails on its code,
# not on the draw; a developer's run (no CI variable) explores new examples each time.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data", "sci_abstracts_dev.jsonl")


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-dim BERT with the packaged MiniLM tokenizer, saved as a plain HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import settings

    path = str(tmp_path_factory.mktemp("tiny_bert"))
    tok = AutoTokenizer.from_pretrained(settings.packaged_minilm())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def summaries_file(tmp_path) -> str:
    """40 papers x 3 summaries. Paper i's summaries share its key word, but each is wrapped in one of
    three long filler sentences, and paper i's first and second summaries use different fillers: an
    untrained model matches fillers, a trained one has to learn to match the key words."""
    keys = ("graph speech vision parsing translation retrieval summary dialogue sentiment entity "
            "music chemistry protein galaxy climate market robot language memory energy "
            "ocean virus planet crystal engine forest river brain light sound "
            "metal cloud bridge garden island desert winter poetry theater coffee").split()
    fillers = ["in this paper we carefully present a new approach that is evaluated on several benchmarks about",
               "the authors describe experiments and a broad analysis showing strong results for",
               "our work proposes a simple yet effective method with an open source release concerning"]
    recs = [{"id": f"p{i}", "summaries": [f"{fillers[(i + j) % 3]} {k}" for j in range(3)]}
            for i, k in enumerate(keys)]
    return write_jsonl(tmp_path / "summaries.jsonl", recs)


@pytest.fixture(autouse=True)
def no_validation_corpus(monkeypatch):
    """Training tests validate on their own summaries only (340 held-out arXiv papers per validation
    would dominate their time); tests of the Title-Abstract validation set validation_corpus_file."""
    import settings

    monkeypatch.setattr(settings, "validation_corpus_file", "")
