"""Reliability: loaders take any bytes and answer with our clean error; a killed training run resumes."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import load_data as L
from conftest import ROOT

text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(text, text, st.one_of(st.none(), text)), min_size=1, max_size=8, unique_by=lambda r: r[0]))
def test_corpus_round_trips_any_unicode(tmp_path, rows):
    path = str(tmp_path / "c.jsonl")
    L.write_jsonl_atomic(path, [{"id": i, "title": t, "abstract": t + "!", "label": lab} for i, t, lab in rows])
    back = L.load_corpus(path)
    assert [(p["id"], p["title"], p["label"]) for p in back] == [(i, t, lab) for i, t, lab in rows]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_give_our_clean_error_or_data(tmp_path, blob):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    for loader in (L.load_corpus, L.load_summaries):
        try:
            loader(str(path))
        except L.DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)


@hsettings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=200), st.integers(2, 20))
def test_sampler_property(papers, batch_size):
    ids = [f"p{x}" for x in papers]
    batches = L.batches_without_duplicates(ids, batch_size)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    assert all(2 <= len(b) <= batch_size and len({ids[i] for i in b}) == len(b) for b in batches)
    left = [ids[i] for i in set(range(len(ids))) - set(used)]
    assert len(set(left)) <= 1  # only pairs of a single paper can be left over


def test_non_utf8_huge_lines_and_wrong_types_are_named(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": "a", "title": "t", "abstract": "caf\xe9"}\n')
    with pytest.raises(L.DataError, match=r"x.jsonl:1: not valid UTF-8"):
        L.load_corpus(str(p))
    huge = "word " * 400_000  # a 2 MB abstract is still one paper
    p.write_text(json.dumps({"id": "a", "title": "t", "abstract": huge}) + "\n")
    assert len(L.load_corpus(str(p))[0]["abstract"]) == len(huge)
    p.write_text(json.dumps({"id": "a", "title": ["t"], "abstract": "x"}) + "\n")
    with pytest.raises(L.DataError, match=r"x.jsonl:1: field 'title' must be str, got list"):
        L.load_corpus(str(p))


def test_killed_training_resumes_to_the_end(tmp_path, tiny_model_dir, summaries_file):
    """Kill the training script at random moments (SIGKILL), rerun with --resume each time: every
    checkpoint left behind loads, and the run ends at the last step as one uninterrupted run would."""
    args = [sys.executable, os.path.join(ROOT, "train_embedding_model.py"), f"--encoder_checkpoint={tiny_model_dir}",
            f"--train_summaries_file={summaries_file}", f"--output_dir={tmp_path}", "--save_name=k", "--batch_size=8",
            "--validation_size=10", "--max_steps=40", "--eval_every=2", "--precision=fp32", "--device=cpu", "--patience=0",
            "--resume"]
    rng = random.Random(0)
    last = tmp_path / "k" / "last"
    for _ in range(3):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.time() + 120
        while not (last / "training_state.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # wait until it is really training
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.replace(last, str(last) + ".old") if rng.random() < 0.3 and last.exists() else None  # a kill mid-swap
        from model import load_model

        load_model(str(last), "cpu")  # never broken (recovered from .old if needed)
        torch.load(last / "training_state.pt", weights_only=False)
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(last / "training_state.pt", weights_only=False)
    assert state["step"] == 40
    steps = [json.loads(x)["step"] for x in open(tmp_path / "k" / "log.jsonl")]
    assert steps[-1] == 40 and steps == sorted(steps)


word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
sentence = st.builds(lambda first, rest: " ".join([first.capitalize(), *rest]) + ".", word, st.lists(word, max_size=12))


@hsettings(max_examples=200, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=10))
def test_half_split_property(sentences):
    from semantic_benchmark import split_halves

    text = " ".join(sentences)
    halves = split_halves(text)
    if len(sentences) == 1:
        assert halves is None
        return
    first, second = halves
    assert first and second and f"{first} {second}" == text  # a cut at a sentence boundary, nothing lost
    # no other sentence boundary gives more equal halves (lengths in characters of the sentences)
    k = next(i for i in range(1, len(sentences) + 1) if " ".join(sentences[:i]) == first)
    size = lambda part: sum(len(x) for x in part)  # noqa: E731
    best = abs(size(sentences[:k]) - size(sentences[k:]))
    assert all(best <= abs(size(sentences[:i]) - size(sentences[i:])) for i in range(1, len(sentences)))
