"""LLM generation when things go wrong: malformed replies, Ctrl-C, an output file of another kind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, write_jsonl
from fake_openai_server import FakeOpenAIServer
from test_generation import KEY, cfg_for, lines, make_corpus, run_script

import generate_search_queries as gq
import generate_train_summaries as gs
from semcse import llm
from semcse import llm_files
import load_data
from load_data import DataError


@pytest.fixture
def server():
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def test_malformed_replies_are_failed_attempts_never_crashes(server, tmp_path):
    once = {f"p{i}": f"@fake:{m}:1" for i, m in enumerate(["html", "nonstring", "nullmsg", "nochoices", "badjson",
                                                           "cut"])}
    always = {"p6": "@fake:oddusage:99", "p7": "@fake:nousage:99", "p8": "@fake:html:99", "p9": "@fake:cut:99",
              "p10": "@fake:nullmsg:99"}
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=11, directives={**once, **always}),
                  llm_http_retries=1, llm_retries=1)
    stats = gs.generate_summaries(cfg)
    assert (stats["done"], stats["failed"]) == (8, 3)
    good = {r["id"]: r for r in lines(cfg.generated_summaries_file)}
    assert sorted(good) == sorted(f"p{i}" for i in range(8))
    for pid in ("p0", "p1", "p2", "p3", "p4"):  # a bad reply is one failed attempt, then the same is asked again
        assert good[pid]["attempts"] == 2 and len(good[pid]["summaries"]) == 4, pid
    assert good["p5"]["attempts"] == 1  # the cut connection was retried by the client itself
    assert good["p6"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}  # odd usage counts nothing
    assert good["p7"]["usage"]["completion_tokens"] == 0
    assert "not a chat completion" in good["p0"]["retried_for"][0]
    assert "content of type dict" in good["p1"]["retried_for"][0]
    assert "no message" in good["p2"]["retried_for"][0] and "no choices" in good["p3"]["retried_for"][0]
    assert "not valid JSON" in good["p4"]["retried_for"][0]
    failed = {r["id"]: r for r in lines(cfg.generated_summaries_file.replace(".jsonl", ".failures.jsonl"))}
    assert "not a chat completion" in failed["p8"]["reason"] and "502 Bad Gateway" in failed["p8"]["attempts"][0]["raw"]
    assert "closed the connection in the middle of its answer" in failed["p9"]["reason"]  # not "cannot reach"
    assert "no message" in failed["p10"]["reason"] and len(failed["p10"]["attempts"]) == 2
    # No feedback to the model for the server's faults: only content retries carry it.
    assert server.snapshot()["stats"].get("with_feedback", 0) == 0


def test_malformed_replies_on_the_command_line(server, tmp_path):
    corpus = make_corpus(tmp_path, n=3, directives={"p0": "@fake:html:99", "p1": "@fake:badjson:99",
                                                    "p2": "@fake:nonstring:99"})
    res = run_script("generate_search_queries.py", [f"--query_corpus_file={corpus}", "--llm_retries=1",
                                                    f"--queries_file={tmp_path}/q.jsonl", "--llm_http_retries=0"],
                     {"OPENAI_BASE_URL": server.base_url})
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "0 done, 3 failed" in res.stderr


def test_ctrl_c_stops_within_seconds_and_keeps_what_is_written(tmp_path):
    """Two papers answer at once, the rest take a minute: Ctrl-C (twice) while those are in flight."""
    srv = FakeOpenAIServer(slow_seconds=60).start()
    try:
        corpus = make_corpus(tmp_path, n=8, directives={f"p{i}": "@fake:slow:99" for i in range(2, 8)})
        out = tmp_path / "out" / "s.jsonl"
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "generate_train_summaries.py"),
                                 f"--generation_corpus_file={corpus}", f"--generated_summaries_file={out}",
                                 "--llm_concurrency=2", "--llm_timeout=120"],
                                env=dict(os.environ, OPENAI_BASE_URL=srv.base_url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and srv.snapshot()["stats"].get("max_inflight", 0) < 2:
            time.sleep(0.05)  # both workers are now waiting on slow papers
        while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
            time.sleep(0.05)
        time.sleep(0.3)
        start = time.time()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        seconds = time.time() - start
    finally:
        srv.stop()
    print(f"stopped {seconds:.2f}s after Ctrl-C")
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "outputs written so far are kept" in err
    assert [r["id"] for r in lines(str(out))] == ["p0", "p1"]  # valid JSONL, compacted
    runs = json.load(open(str(out).replace(".jsonl", ".settings.json")))["runs"]
    assert runs[-1]["done"] == 2


# ----------------------------------------------------------------------------------------------
# An output file of another kind is refused, untouched


def test_refuses_output_files_of_another_kind(server, tmp_path):
    paths = load_data.ensure_default_data(str(tmp_path / "acl"))  # the human ACLSum summaries and their corpus
    corpus = make_corpus(tmp_path, n=2)
    queries = tmp_path / "queries.jsonl"
    cfg = cfg_for(server, tmp_path, corpus, queries_file=str(queries))
    gq.generate_queries(cfg)
    no_newline = write_jsonl(tmp_path / "plain.jsonl", [{"id": "p0", "summaries": ["a b", "c d"]}])
    with open(no_newline, "rb+") as f:  # a last line without its newline: repair_tail would have changed it
        f.truncate(os.path.getsize(no_newline) - 1)
    for target, why in ((paths["train_summaries"], "no field 'model'"), (paths["train_corpus"], "no field"),
                        (corpus, "no field"), (str(queries), "no field 'summaries'"), (no_newline, "no field")):
        before = open(target, "rb").read()
        with pytest.raises(DataError, match=rf"{os.path.basename(target)}:1: not written by this generator "
                                            rf"\({why}.*generated_summaries_file"):
            gs.generate_summaries(cfg.replace(generated_summaries_file=target))
        assert open(target, "rb").read() == before, target
    # Its failures file too; and on the command line: one line naming the file, exit 2.
    out = tmp_path / "new" / "s.jsonl"
    os.makedirs(out.parent)
    shutil.copy(paths["train_summaries"], out.parent / "s.failures.jsonl")
    with pytest.raises(DataError, match=r"s.failures.jsonl:1: not written by this generator"):
        gs.generate_summaries(cfg.replace(generated_summaries_file=str(out)))
    res = run_script("generate_train_summaries.py", [f"--generation_corpus_file={corpus}",
                                                     f"--generated_summaries_file={paths['train_summaries']}"],
                     {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "train_summaries.jsonl:1: not written by this generator" in res.stderr
    assert server.snapshot()["stats"]["requests"] == 2  # only the queries run sent anything


@pytest.mark.parametrize("name,prompt,field", [("llm_summaries.jsonl", "train_summary", "summaries"),
                                               ("queries.jsonl", "search_query", "query"),
                                               ("arxiv_queries.jsonl", "search_query", "query")])
def test_shipped_generator_files_are_accepted_for_resume(tmp_path, name, prompt, field):
    shipped = os.path.join(ROOT, "data", name)
    if not os.path.exists(shipped):
        pytest.skip(f"{shipped} not in this checkout")
    copy = tmp_path / name  # a copy: the shipped file may be growing while the tests run
    shutil.copy(shipped, copy)
    llm_files.check_own_file(str(copy), prompt, field, "x_file")
    failures = os.path.join(ROOT, "data", name.replace(".jsonl", ".failures.jsonl"))
    if os.path.exists(failures):
        shutil.copy(failures, tmp_path / "f.jsonl")
        llm_files.check_own_file(str(tmp_path / "f.jsonl"), prompt, None, "x_file")


def test_a_second_run_on_the_same_file_is_refused_and_cuts_nothing(server, tmp_path):
    import fcntl

    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=2))
    gq.generate_queries(cfg)
    with open(cfg.queries_file, "a") as first_run:
        fcntl.flock(first_run, fcntl.LOCK_EX)
        first_run.write('{"id": "p9", "query": "half written')  # the other run is in the middle of a line
        first_run.flush()
        before = open(cfg.queries_file, "rb").read()
        with pytest.raises(llm.GenerationError, match="queries.jsonl is being written by another run"):
            gq.generate_queries(cfg)
        assert open(cfg.queries_file, "rb").read() == before


@pytest.mark.parametrize("script", ["generate_train_summaries.py", "generate_search_queries.py"])
def test_a_negative_limit_or_a_huge_concurrency_is_one_line(tmp_path, script):
    corpus = make_corpus(tmp_path, n=2)
    out = [f"--generation_corpus_file={corpus}", f"--query_corpus_file={corpus}",
           f"--generated_summaries_file={tmp_path / 's.jsonl'}", f"--queries_file={tmp_path / 'q.jsonl'}"]
    res = run_script(script, ["--limit=-1", *out])
    assert (res.returncode, res.stderr) == (2, "error: option '--limit' must be >= 0 (0 = every paper), got -1\n")
    res = run_script(script, ["--llm_concurrency=100000", *out])
    assert (res.returncode, res.stderr) == (2, "error: setting 'llm_concurrency' must be between 1 and 256, got "
                                               "100000\n")
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl"]  # nothing written


def test_never_more_workers_than_papers_to_do(server, tmp_path, monkeypatch):
    started = []
    real = llm.DaemonPool

    def counted(workers):
        started.append(workers)
        return real(workers)

    monkeypatch.setattr(llm, "DaemonPool", counted)
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=3), llm_concurrency=256)
    assert gq.generate_queries(cfg)["done"] == 3 and started == [3]
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=5), llm_concurrency=256)
    assert gq.generate_queries(cfg)["done"] == 2 and started == [3, 2]  # 3 of the 5 were done before


def test_quality_refuses_what_is_not_a_summaries_file(tmp_path):
    corpus = make_corpus(tmp_path, n=2)
    text = write_jsonl(tmp_path / "text.jsonl", [{"id": "p0", "summaries": "abc"}])
    res = run_script("generate_train_summaries.py", [f"--quality={text}", f"--generation_corpus_file={corpus}"])
    assert (res.returncode, res.stderr) == (2, f"error: {text}:1: field 'summaries' must be list, got str\n")
    res = run_script("generate_train_summaries.py", [f"--quality={corpus}", f"--generation_corpus_file={corpus}"])
    assert (res.returncode, res.stderr) == (2, f"error: {corpus}:1: missing field 'summaries'\n")
