"""Reliability: loaders take any bytes and answer with our clean error; a killed training run resumes."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import load_data as L
from load_data import _ABBREVIATIONS
from conftest import ROOT

text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(text, text, st.one_of(st.none(), text)), min_size=1, max_size=8, unique_by=lambda r: r[0]))
def test_corpus_round_trips_any_unicode(tmp_path, rows):
    path = str(tmp_path / "c.jsonl")
    L.write_jsonl_atomic(path, [{"id": i, "title": t, "abstract": t + "!", "label": lab} for i, t, lab in rows])
    back = L.load_corpus(path)
    assert [(p["id"], p["title"], p["label"]) for p in back] == [(i, t, lab) for i, t, lab in rows]


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.lists(st.text(max_size=12), max_size=5)), min_size=1, max_size=8))
def test_summaries_merge_by_id_keep_distinct_text_and_drop_papers_below_two(tmp_path, rows):
    path = str(tmp_path / "s.jsonl")
    L.write_jsonl_atomic(path, [{"id": i, "summaries": s} for i, s in rows])
    want: dict[str, list[str]] = {}
    for i, s in rows:  # what the format promises, written out plainly
        for x in (x.strip() for x in s):
            if x and x not in want.setdefault(i, []):
                want[i].append(x)
    want = {i: s for i, s in want.items() if len(s) >= 2}
    try:
        assert L.load_summaries(path) == want
    except L.DataError as e:
        assert not want and "no paper has at least 2" in str(e)


def _fuzz_loaders(path: str) -> list:
    from semcse.llm import compact
    from semcse.benchmark_tasks import load_queries

    return [L.load_corpus, L.load_summaries, lambda p: load_queries(p, {"a"}),
            lambda p: compact(p, "query", "m", "h"), lambda p: list(L.iter_jsonl(p, allow_truncated_tail=True))]


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.sampled_from([b'{"id": "a", "title": "t", "abstract": "x. Y.", "query": "q", '
                                           b'"summaries": ["s", "t"]}', b"{", b"[]", b'"x"', b"\xff", b"\n",
                                           b'{"id": 1}', b'{"id": "a", "title": ""}']), max_size=6).map(b"\n".join)))
def test_random_bytes_give_our_clean_error_or_data(tmp_path, blob):
    """Every loader (corpus, summaries, queries, generation output compaction, the raw reader) answers
    random bytes, and near-valid lines, with data or our one-line DataError naming the file."""
    path = tmp_path / "fuzz.jsonl"
    for loader in _fuzz_loaders(str(path)):
        path.write_bytes(blob)  # compact may rewrite it
        try:
            loader(str(path))
        except L.DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)


@hsettings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["--metric=", "--batch_size=", "--resume", "--seed=-"])
                          .flatmap(lambda k: st.text(max_size=6).map(lambda v: k + v))), max_size=4))
def test_random_command_lines_give_our_clean_error_or_settings(argv):
    from semcse import cli
    import settings

    saved = {k: getattr(settings, k) for k in settings._TYPES}
    try:
        cli.parse_command_line(argv, flags={"resume": False})
        assert settings.metric in ("auto", "euclidean", "cosine") and isinstance(settings.batch_size, int)
    except settings.SettingsError as e:
        assert "\n" not in str(e)
    finally:
        settings.update(**saved)


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


def test_lines_over_the_limit_and_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "MAX_LINE_BYTES", 1 << 20)
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"id": "a", "title": "t", "abstract": "x"}\n' + b"y" * (2 << 20))  # 2 MiB, no newline
    with pytest.raises(L.DataError, match=r"x.jsonl:2: line longer than 1 MiB"):
        L.load_corpus(str(p))
    with pytest.raises(L.DataError, match=r": is a folder, not a JSON Lines file"):
        L.load_corpus(str(tmp_path))


def test_streaming_readers_hold_one_line_not_the_file(tmp_path):
    """A 40 MB corpus is checked, compacted and repaired with a few MB of Python memory (tracemalloc):
    what they keep is ids, offsets and one line. Training's summaries are held in memory, as lists."""
    import tracemalloc

    p, s = tmp_path / "big.jsonl", tmp_path / "summaries.jsonl"
    filler = "word " * 4000  # 20 KB abstracts, 2000 papers
    with open(p, "w") as f, open(s, "w") as g:
        for i in range(2000):
            f.write(json.dumps({"id": f"p{1999 - i:04d}", "title": f"t{i}", "abstract": filler}) + "\n")
            g.write(json.dumps({"id": f"p{i:04d}", "summaries": [f"{k} {filler[:5000]}" for k in range(4)]}) + "\n")
        f.write('{"id": "p9999", "title": "cut sh')  # a killed writer's last line
    assert p.stat().st_size > 40e6 and s.stat().st_size > 40e6
    summaries = L.load_summaries(str(s))
    assert len(summaries) == 2000 and len(summaries["p0007"]) == 4 and summaries["p0007"][3].startswith("3 ")
    tracemalloc.start()
    try:
        L.repair_tail(str(p))
        n = sum(1 for _ in L.iter_corpus(str(p)))
        offsets = {r["id"]: o for _, o, r in L.iter_records(str(p)) if int(r["id"][1:]) % 2 == 0}
        L.keep_lines(str(p), offsets)  # every other paper, sorted by id
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 2000 and peak < 4e6, peak
    ids = [r["id"] for _, r in L.iter_jsonl(str(p))]
    assert ids == [f"p{i:04d}" for i in range(0, 2000, 2)]


def test_killed_training_resumes_to_the_end(tmp_path, tiny_model_dir, summaries_file):
    """Kill the training script at random moments (SIGKILL), rerun with --resume each time: every
    checkpoint left behind loads, and the run ends at the last step as one uninterrupted run would."""
    args = [sys.executable, os.path.join(ROOT, "train_embedding_model.py"), f"--encoder_checkpoint={tiny_model_dir}",
            f"--train_summaries_file={summaries_file}", f"--output_dir={tmp_path}", "--save_name=k", "--batch_size=8",
            "--validation_size=10", "--max_steps=40", "--eval_every=2", "--precision=fp32", "--device=cpu", "--patience=0",
            "--validation_corpus_file=", "--resume"]  # 20 validations: on the summaries only, to stay quick
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
        if rng.random() < 0.3 and last.exists():  # a kill mid-swap: last/ already renamed, the new one not yet in
            shutil.rmtree(str(last) + ".old", ignore_errors=True)  # what a kill during its removal leaves
            os.replace(last, str(last) + ".old")
        from semcse.model import load_model

        load_model(str(last), "cpu")  # never broken (recovered from .old if needed)
        torch.load(last / "training_state.pt", weights_only=True)
    with open(tmp_path / "k" / "log.jsonl", "a") as f:
        f.write('{"step": 3, "val_mean_ra')  # what a kill in the middle of a log write leaves
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dropped a truncated last line" in done.stderr
    state = torch.load(last / "training_state.pt", weights_only=True)
    assert state["step"] == 40
    steps = [json.loads(x)["step"] for x in open(tmp_path / "k" / "log.jsonl")]
    assert steps[-1] == 40 and steps == sorted(steps)


def test_killed_benchmark_resumes_to_the_same_results(tmp_path, tiny_model_dir):
    """Kill the benchmark at random moments (SIGKILL): every results file, table and cached embedding
    left behind is whole; the rerun keeps the tasks already scored and ends with the results of one
    uninterrupted run."""
    import numpy as np

    topics = ["graph parsing", "speech recognition", "image segmentation", "machine translation", "protein folding"]
    papers = [{"id": f"p{i}", "title": f"Study {i} of {topics[i % 5]} with w{i}", "label": topics[i % 5].split()[0],
               "abstract": f"We study {topics[i % 5]} with method w{i}. It is tested on data set d{i % 7}. "
                           f"Results improve by {i % 13} points over baselines. Code for w{i} is released."}
              for i in range(600)]
    corpus = tmp_path / "corpus.jsonl"
    queries = tmp_path / "queries.jsonl"
    L.write_jsonl_atomic(str(corpus), papers)
    L.write_jsonl_atomic(str(queries), [{"id": p["id"], "query": f"w{i} {topics[i % 5]}"} for i, p in enumerate(papers)])

    def args(out):
        return [sys.executable, os.path.join(ROOT, "semantic_benchmark.py"), f"--model={tiny_model_dir}",
                f"--corpus={corpus}", f"--queries={queries}", f"--output_dir={out}", "--device=cpu",
                "--precision=fp32", f"--embedding_cache_dir={out}/cache", "--encode_batch_size=16"]

    def results(out) -> dict:
        files = list((out / "benchmark" / "corpus").glob("*.json"))
        return json.loads(files[0].read_text())["tasks"] if files else {}

    started = time.time()
    ref = subprocess.run(args(tmp_path / "ref"), capture_output=True, text=True, cwd=ROOT)
    assert ref.returncode == 0, ref.stderr[-2000:]
    seconds = time.time() - started
    out = tmp_path / "run"
    rng = random.Random(1)
    for k in range(4):
        before = results(out)
        proc = subprocess.Popen(args(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        if k == 2:  # at any moment of the run
            time.sleep(rng.uniform(0.3, seconds))
        else:  # in the middle of scoring: just after it wrote a task
            deadline = time.time() + 120
            while results(out) == before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        scored = results(out)  # loads: never half a file
        assert all(isinstance(t, dict) and "seconds" in t for t in scored.values())
        table = out / "benchmark" / "corpus" / "results.md"
        assert not table.exists() or table.read_text().endswith("\n")
        for f in (out / "cache").glob("*"):
            assert f.suffix == ".npy" or ".tmp" in f.name
            if f.suffix == ".npy":
                assert np.load(f).shape[1] == 32
    done = subprocess.run(args(out), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    for task in scored:
        assert f"{task}: already scored" in done.stdout
    strip = lambda r: {t: {k: v for k, v in m.items() if k != "seconds"} for t, m in r.items()}  # noqa: E731
    assert strip(results(out)) == strip(results(tmp_path / "ref"))
    assert set(results(out)) == {"title_abstract", "abstract_segments", "query", "clustering"}


word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
# A sentence never ends in an abbreviation ("... et al. Our ..." is one sentence, by the splitter's rule).
sentence = st.builds(lambda first, rest: " ".join([first.capitalize(), *rest]) + ".", word, st.lists(word, max_size=12)
                     ).filter(lambda s: s.split()[-1].rstrip(".").lower() not in _ABBREVIATIONS)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=10))
def test_half_split_property(sentences):
    from load_data import split_halves

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
