"""LLM generation: both scripts through the real openai client over HTTP against our fake server."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest
from conftest import ROOT, write_jsonl
from fake_openai_server import FakeOpenAIServer

import generate_search_queries as gq
import generate_train_summaries as gs
from semcse import llm
from semcse import llm_workers
from semcse import cli
import settings
import load_data as L
from load_data import DataError, iter_jsonl, load_summaries

KEY = "sk-test-5Ecr3t-d0-n0t-le4k-7f3a9c"


@pytest.fixture
def server():
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def make_corpus(tmp_path, n=6, directives=None, name="corpus.jsonl") -> str:
    """Papers p0..p{n-1}; "[paper pN]" lets the server count requests per paper."""
    directives = directives or {}
    return write_jsonl(tmp_path / name, [
        {"id": f"p{i}", "title": f"Learning thing number {i} from data",
         "abstract": f"[paper p{i}] We study how thing {i} is learned from data with a simple method. "
                     f"{directives.get(f'p{i}', '')}"} for i in range(n)])


def cfg_for(server, tmp_path, corpus, **overrides) -> dict:
    base = dict(llm_base_url=server.base_url, llm_api_key=KEY, generation_corpus_file=corpus,
                query_corpus_file=corpus, generated_summaries_file=str(tmp_path / "out" / "llm_summaries.jsonl"),
                queries_file=str(tmp_path / "out" / "queries.jsonl"), llm_concurrency=4, llm_retries=2,
                llm_http_retries=2, llm_timeout=10.0)
    base.update(overrides)
    return settings.resolved(**base)


def lines(path) -> list[dict]:
    return [r for _, r in iter_jsonl(path)] if os.path.exists(path) else []


def run_script(script, args, env_extra=None, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], env=env, capture_output=True,
                          text=True, timeout=60, **kw)


# ----------------------------------------------------------------------------------------------


def test_summaries_end_to_end(server, tmp_path):
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=6))
    stats = gs.generate_summaries(cfg)
    assert (stats["done"], stats["failed"], stats["skipped"]) == (6, 0, 0)
    out = cfg.generated_summaries_file
    recs = lines(out)
    sha = gs.SUMMARY_PROMPT.sha256(gs.prompt_values(4))
    assert [r["id"] for r in recs] == [f"p{i}" for i in range(6)]  # sorted, one line each
    for r in recs:
        assert len(r["summaries"]) == 4 and len(set(r["summaries"])) == 4
        assert r["model"] == "local-model" and r["served_model"] == "fake/local-model"
        assert r["server"] == server.base_url.split("//")[1].split("/")[0]
        assert (r["prompt"], r["prompt_sha256"]) == ("train_summary/v3", sha)
        assert r["sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512}
        assert r["response_format"] == "json_object" and r["finish_reason"] == "stop" and r["attempts"] == 1
        assert r["usage"]["completion_tokens"] > 0 and r["seconds"] >= 0 and "status" not in r
    assert load_summaries(out) == {r["id"]: r["summaries"] for r in recs}
    assert not os.path.exists(out.replace(".jsonl", ".failures.jsonl"))
    side = json.load(open(out.replace(".jsonl", ".settings.json")))
    assert side["prompt"]["sha256"] == sha and side["runs"][-1]["done"] == 6
    assert "llm_api_key" not in side and KEY not in json.dumps(side)
    assert server.snapshot()["seen"] == {f"p{i}": 1 for i in range(6)}
    # Another number of summaries changes the instructions: every paper again, replacing its line.
    assert gs.generate_summaries(cfg.replace(summaries_per_abstract=3))["done"] == 6
    assert [len(r["summaries"]) for r in lines(out)] == [3] * 6
    runs = json.load(open(out.replace(".jsonl", ".settings.json")))["runs"]
    assert [(r["done"], r["skipped"]) for r in runs] == [(6, 0), (6, 0)] and runs[0]["prompt_sha256"] == sha


def test_queries_end_to_end(server, tmp_path):
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=5))
    assert gq.generate_queries(cfg)["done"] == 5
    recs = lines(cfg.queries_file)
    assert [r["id"] for r in recs] == [f"p{i}" for i in range(5)]
    assert all(r["query"].startswith("how ") and r["prompt"] == "search_query/v1" for r in recs)
    assert os.path.exists(cfg.queries_file.replace(".jsonl", ".settings.json"))


def test_summary_validation():
    paper = {"title": "A title", "abstract": "An abstract that is long enough to be a summary of something."}
    good = ["One summary of the whole work here, in plain words.", "Another summary, with quite different wording of its own."]
    assert gs.parse_summaries({"summaries": good + ["A third one, not needed at all here."]}, paper, 2) == good
    assert gs.parse_summaries({"summaries": [{"summary": good[0]}, {"text": good[1]}]}, paper, 2) == good
    for bad in ({"summaries": good[:1]}, {"summaries": [good[0], " " + good[0].upper()]}, {"summary": good},
                {"summaries": [good[0], "too short"]}, {"summaries": [good[0], paper["abstract"]]},
                {"summaries": "not a list"}):
        with pytest.raises(llm.InvalidOutput):
            gs.parse_summaries(bad, paper, 2)


def test_query_validation():
    paper = {"title": "Neural Machine Translation by Jointly Learning to Align", "abstract": "x"}
    assert gq.parse_query({"query": " attention  for\nalignment "}, paper) == "attention for alignment"
    assert gq.parse_query({"query": "jointly learning to align words"}, paper)  # other words around a part
    for bad in ({"query": "neural machine translation by jointly learning to align!"}, {"query": ""}, {"q": "x y"},
                {"query": "Machine translation by jointly learning"}, {"query": "survey: " + paper["title"]},
                {"query": "x"}, {"query": " ".join(["word"] * 31)}, {"query": ["a", "list"]}):
        with pytest.raises(llm.InvalidOutput):
            gq.parse_query(bad, paper)


def test_failures_are_retried_then_recorded(server, tmp_path):
    directives = {"p0": "@fake:invalid:1", "p1": "@fake:invalid:99", "p2": "@fake:empty:99",
                  "p3": "@fake:500:1", "p4": "@fake:429:2", "p5": "@fake:500:99", "p6": "@fake:fence:9",
                  "p7": "@fake:dupes:99", "p8": "@fake:length:99", "p9": ""}
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=10, directives=directives))
    stats = gs.generate_summaries(cfg)
    assert (stats["done"], stats["failed"]) == (5, 5)
    good = {r["id"]: r for r in lines(cfg.generated_summaries_file)}
    assert sorted(good) == ["p0", "p3", "p4", "p6", "p9"]  # only good items in the training file
    assert good["p0"]["attempts"] == 2 and good["p3"]["attempts"] == 1
    failed = {r["id"]: r for r in lines(cfg.generated_summaries_file.replace(".jsonl", ".failures.jsonl"))}
    assert sorted(failed) == ["p1", "p2", "p5", "p7", "p8"]
    assert "not valid JSON" in failed["p1"]["reason"] and len(failed["p1"]["attempts"]) == 3
    assert failed["p1"]["attempts"][0]["raw"].startswith("Sure! Here are")
    assert "empty content" in failed["p2"]["reason"]
    assert "HTTP 500" in failed["p5"]["reason"] and "summaries" not in failed["p5"]
    assert "nearly the same as summary 1" in failed["p7"]["reason"]
    assert "llm_max_tokens" in failed["p8"]["reason"] and failed["p8"]["attempts"][0]["finish_reason"] == "length"
    # content retries: 1 + llm_retries requests; HTTP errors: 1 + llm_http_retries (the client's)
    seen = server.snapshot()["seen"]
    assert seen == {"p0": 2, "p1": 3, "p2": 3, "p3": 2, "p4": 3, "p5": 3, "p6": 1, "p7": 3, "p8": 3, "p9": 1}
    assert server.snapshot()["stats"]["with_feedback"] == 9  # each content retry shows the failed answer
    # A rerun retries only the failures; a paper that now succeeds leaves the failures file.
    stats = gs.generate_summaries(cfg.replace(llm_retries=0))
    assert (stats["skipped"], stats["failed"]) == (5, 5)
    assert sorted(r["id"] for r in lines(cfg.generated_summaries_file.replace(".jsonl", ".failures.jsonl"))) == \
        ["p1", "p2", "p5", "p7", "p8"]


def test_concurrency_is_bounded(tmp_path):
    srv = FakeOpenAIServer(latency=0.05).start()
    try:
        cfg = cfg_for(srv, tmp_path, make_corpus(tmp_path, n=24), llm_concurrency=3)
        assert gq.generate_queries(cfg)["done"] == 24
        assert srv.snapshot()["stats"]["max_inflight"] == 3
    finally:
        srv.stop()


def test_resume_after_kill_loses_nothing_repeats_nothing(tmp_path, capsys):
    slow = FakeOpenAIServer(latency=0.15).start()
    try:
        corpus = make_corpus(tmp_path, n=16)
        out = tmp_path / "out" / "llm_summaries.jsonl"
        args = [f"--generation_corpus_file={corpus}", f"--generated_summaries_file={out}", "--llm_concurrency=2"]
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "generate_train_summaries.py"), *args],
                                env=dict(os.environ, OPENAI_BASE_URL=slow.base_url), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 4):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at_kill = {r["id"] for _, r in iter_jsonl(str(out), allow_truncated_tail=True)}
        assert 4 <= len(done_at_kill) < 16
        pending = sorted(set(f"p{i}" for i in range(16)) - done_at_kill)
        with open(out, "a") as f:  # what a kill in the middle of a write leaves
            f.write('{"id": "%s", "summaries": ["Summary 1 sa' % pending[0])
        before = slow.snapshot()["stats"]["requests"]
    finally:
        slow.stop()
    fast = FakeOpenAIServer().start()
    try:
        cfg = cfg_for(fast, tmp_path, corpus, generated_summaries_file=str(out), llm_api_key="")
        stats = gs.generate_summaries(cfg)
        assert "dropped a truncated last line" in capsys.readouterr().err
        assert stats["skipped"] == len(done_at_kill) and stats["done"] == 16 - len(done_at_kill)
        assert sorted(fast.snapshot()["seen"]) == pending  # nothing done is asked again
        assert before <= len(done_at_kill) + 2  # the killed run asked at most its in-flight papers more
        recs = lines(str(out))
        assert [r["id"] for r in recs] == sorted(f"p{i}" for i in range(16))
        assert len(load_summaries(str(out))) == 16
    finally:
        fast.stop()


def test_repair_tail_keeps_complete_last_object(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "query": "q a"}\n{"id": "b", "query": "q b"}')
    L.repair_tail(str(path))
    assert path.read_text().endswith('"q b"}\n') and len(lines(str(path))) == 2
    path.write_text('{"id": "a", "query": "q a"}\n{"id": "b", "qu')
    L.repair_tail(str(path))
    assert path.read_text() == '{"id": "a", "query": "q a"}\n'


def test_resume_by_model_and_prompt_and_compaction(server, tmp_path, monkeypatch):
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=4))
    gq.generate_queries(cfg)
    assert gq.generate_queries(cfg)["skipped"] == 4 and server.snapshot()["stats"]["requests"] == 4
    # Another model: every paper again; the compact file keeps one line per paper, the new model's.
    assert gq.generate_queries(cfg.replace(llm_model="other"))["done"] == 4
    assert [r["model"] for r in lines(cfg.queries_file)] == ["other"] * 4
    # Another prompt version: the same.
    monkeypatch.setattr(gq, "QUERY_PROMPT", dataclasses.replace(gq.QUERY_PROMPT, version=2))
    assert gq.generate_queries(cfg.replace(llm_model="other"), limit=2)["done"] == 2
    recs = lines(cfg.queries_file)
    assert [(r["id"], r["prompt"]) for r in recs] == [("p0", "search_query/v2"), ("p1", "search_query/v2"),
                                                     ("p2", "search_query/v1"), ("p3", "search_query/v1")]
    assert server.snapshot()["stats"]["requests"] == 10


def test_compact_dedupes_and_sorts(tmp_path):
    path = str(tmp_path / "s.jsonl")
    mk = lambda pid, s, model="m": {"id": pid, "summaries": [s, s + "!"], "model": model, "prompt_sha256": "h"}
    write_jsonl(path, [mk("b", "one"), mk("a", "two"), mk("b", "three"), mk("c", "old", "x"), mk("c", "older", "y")])
    assert llm.compact(path, "summaries", "m", "h") == ["a", "b", "c"]
    assert [(r["id"], r["summaries"][0]) for r in lines(path)] == [("a", "two"), ("b", "one"), ("c", "older")]


def test_response_format_fallback(tmp_path):
    srv = FakeOpenAIServer(reject_response_format=True).start()
    try:
        corpus = make_corpus(tmp_path, n=3)
        cfg = cfg_for(srv, tmp_path, corpus, llm_concurrency=1)
        assert gs.generate_summaries(cfg)["done"] == 3
        assert all(r["response_format"] is None for r in lines(cfg.generated_summaries_file))
        assert srv.snapshot()["stats"] == {"requests": 4, "with_response_format": 1, "max_inflight": 1}
        # Forced JSON mode fails visibly (recorded, not fatal); "none" never sends it.
        stats = gq.generate_queries(cfg.replace(llm_response_format="json_object"))
        failures = lines(cfg.queries_file.replace(".jsonl", ".failures.jsonl"))
        assert stats["failed"] == 3 and "HTTP 400" in failures[0]["reason"]
        assert gq.generate_queries(cfg.replace(llm_response_format="none"))["done"] == 3
        assert srv.snapshot()["stats"]["with_response_format"] == 4
    finally:
        srv.stop()


def test_fatal_errors_stop_the_run(server, tmp_path):
    corpus = make_corpus(tmp_path, n=3, directives={"p0": "@fake:401:9", "p1": "@fake:401:9", "p2": "@fake:401:9"})
    with pytest.raises(llm.FatalServerError, match="HTTP 401.*OPENAI_API_KEY"):
        gs.generate_summaries(cfg_for(server, tmp_path, corpus, llm_concurrency=1))
    dead = cfg_for(server, tmp_path, corpus, llm_base_url="http://127.0.0.1:9/v1", llm_http_retries=0)
    with pytest.raises(llm.FatalServerError, match="cannot reach 127.0.0.1:9"):
        gs.generate_summaries(dead)


def test_dry_run_sends_nothing(server, tmp_path):
    corpus = make_corpus(tmp_path, n=3)
    res = run_script("generate_search_queries.py", [f"--query_corpus_file={corpus}", "--dry-run",
                                                    f"--queries_file={tmp_path}/out/q.jsonl"],
                     {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY})
    assert res.returncode == 0, res.stderr
    request = json.loads(res.stdout)
    assert request["POST"] == server.base_url + "/chat/completions" and request["paper"] == "p0"
    assert request["body"]["response_format"] == {"type": "json_object"}
    assert "Title: Learning thing number 0 from data" in request["body"]["messages"][1]["content"]
    assert KEY not in res.stdout + res.stderr
    assert server.snapshot()["stats"] == {} and not (tmp_path / "out").exists()


def test_key_never_printed_or_written(tmp_path):
    srv = FakeOpenAIServer(expected_key=KEY).start()
    try:
        directives = {"p1": "@fake:500:99", "p2": "@fake:invalid:99"}
        corpus = make_corpus(tmp_path, n=4, directives=directives)
        out = tmp_path / "out"
        args = [f"--generation_corpus_file={corpus}", f"--generated_summaries_file={out}/s.jsonl",
                "--llm_http_retries=1", "--llm_retries=1"]
        env = {"OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": KEY, "OPENAI_LOG": "debug"}
        runs = [run_script("generate_train_summaries.py", args, env),
                run_script("generate_train_summaries.py", args + [f"--llm_api_key={KEY}"], {"OPENAI_LOG": "debug",
                           "OPENAI_BASE_URL": srv.base_url}),
                run_script("generate_train_summaries.py", args, dict(env, OPENAI_API_KEY=KEY + "-wrong")),
                run_script("generate_train_summaries.py", args + ["--dry_run"], env)]
        assert [r.returncode for r in runs] == [0, 0, 2, 0]  # cli.cli: one line, exit code 2
        assert runs[2].stderr.strip().splitlines()[-1].startswith("error: 127.0.0.1")
        assert "HTTP 401" in runs[2].stderr and "Retrying" in runs[0].stderr  # the client's debug log ran
        stats = srv.snapshot()["stats"]
        # the key was sent every time, just never shown; the wrong key was tried for the 2 failed papers
        assert stats["key_ok"] > 0 and stats["key_bad"] == 2
        for r in runs:
            assert KEY not in r.stdout + r.stderr
        files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
        assert len(files) == 3  # summaries, failures, settings
        for f in files:
            assert KEY not in open(f).read(), f
    finally:
        srv.stop()


def test_environment_precedence(monkeypatch):
    for k in ("llm_base_url", "llm_api_key", "llm_model"):
        monkeypatch.setattr(settings, k, getattr(settings, k))  # restored after the test
    llm.apply_environment({"OPENAI_BASE_URL": "http://env-host:1/v1", "OPENAI_API_KEY": ""})
    assert settings.llm_base_url == "http://env-host:1/v1" and settings.llm_api_key == ""
    flags = cli.parse_command_line(["--llm_base_url=http://cli-host:2/v1", "--dry-run"],
                                        flags={"dry_run": False, "limit": 0})
    assert settings.llm_base_url == "http://cli-host:2/v1" and flags == {"dry_run": True, "limit": 0}


def test_host_and_redaction():
    cfg = settings.resolved(llm_api_key=KEY, llm_base_url="https://user:pa55word@example.org:8443/v1")
    assert llm.server_host(cfg.llm_base_url) == "example.org:8443"
    assert llm.redact(f"bad key {KEY} at https://user:pa55word@x", cfg) == "bad key *** at https://user:***@x"


def test_fake_server_modes(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)

    def ask(text):
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    with pytest.raises(openai.RateLimitError):
        ask("@fake:429:1 a")
    with pytest.raises(openai.InternalServerError):
        ask("@fake:500:1 b")
    assert ask("@fake:empty:1 c").choices[0].message.content == ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(ask("@fake:invalid:1 d").choices[0].message.content)
    assert json.loads(ask("Write 3 different summaries. Abstract: x y z").choices[0].message.content)["summaries"][2]


def test_bad_files_give_one_line_errors(server, tmp_path):
    corpus = make_corpus(tmp_path, n=2)
    with open(corpus, "a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"corpus.jsonl:3: not valid JSON"):
        gq.generate_queries(cfg_for(server, tmp_path, corpus))
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=2, name="ok.jsonl"))
    os.makedirs(os.path.dirname(cfg.queries_file))
    write_jsonl(cfg.queries_file, ["{broken", '{"id": "p0", "query": "q"}'])
    with pytest.raises(DataError, match=r"queries.jsonl:1: not valid JSON"):
        gq.generate_queries(cfg)
    with pytest.raises(llm.GenerationError, match="llm_concurrency"):
        gq.generate_queries(dataclasses.replace(cfg, llm_concurrency=0))  # built in code, unchecked
    assert server.snapshot()["stats"] == {}


def test_timeout_is_a_failure_not_fatal(tmp_path):
    srv = FakeOpenAIServer(latency=0.5).start()
    try:
        cfg = cfg_for(srv, tmp_path, make_corpus(tmp_path, n=2), llm_timeout=0.1, llm_http_retries=1)
        stats = gq.generate_queries(cfg)
        assert (stats["done"], stats["failed"]) == (0, 2)
        failed = lines(cfg.queries_file.replace(".jsonl", ".failures.jsonl"))
        assert all(r["reason"].startswith("timeout after 0.1s and 1 client retries") for r in failed)
        assert srv.snapshot()["seen"] == {"p0": 2, "p1": 2}
    finally:
        srv.stop()


def test_interrupt_keeps_what_is_done(server, tmp_path):
    def parse(obj, paper):  # Ctrl-C arrives while the third paper is being handled
        if paper["id"] == "p2":
            raise KeyboardInterrupt
        return gq.parse_query(obj, paper)
    cfg = cfg_for(server, tmp_path, make_corpus(tmp_path, n=6), llm_concurrency=1)
    with pytest.raises(KeyboardInterrupt):
        llm.generate("queries", gq.QUERY_PROMPT, "query", parse, cfg.query_corpus_file, cfg.queries_file, cfg)
    assert [r["id"] for r in lines(cfg.queries_file)][:2] == ["p0", "p1"]
    assert json.load(open(cfg.queries_file.replace(".jsonl", ".settings.json")))["runs"][-1]["done"] >= 2
    assert gq.generate_queries(cfg)["skipped"] >= 2  # and a rerun goes on from there
    assert [r["id"] for r in lines(cfg.queries_file)] == [f"p{i}" for i in range(6)]


def test_papers_are_drawn_from_the_stream_only_as_workers_free_up():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    drawn, finished, lock, most = [0], [0], threading.Lock(), [0]

    def stream():
        for i in range(200):
            with lock:
                drawn[0] += 1
                most[0] = max(most[0], drawn[0] - finished[0])
            yield i

    def work(i):
        time.sleep(0.001)
        with lock:
            finished[0] += 1
        return i

    with ThreadPoolExecutor(max_workers=3) as pool:
        got = sorted(f.result() for f in llm_workers.completed(pool, work, stream(), window=6))
    assert got == list(range(200)) and most[0] <= 6


def test_redirects_are_not_followed(tmp_path):
    """Data goes only to llm_base_url: a server that redirects elsewhere stops the run, and the other
    address never sees a request."""
    elsewhere = FakeOpenAIServer().start()
    redirecting = FakeOpenAIServer(redirect_to=elsewhere.base_url).start()
    try:
        cfg = cfg_for(redirecting, tmp_path, make_corpus(tmp_path, n=3), llm_concurrency=1)
        with pytest.raises(llm.FatalServerError, match=r"HTTP 307, a redirect, not followed"):
            gs.generate_summaries(cfg)
        assert redirecting.snapshot()["stats"]["redirected"] >= 1
        assert elsewhere.snapshot()["stats"] == {}
    finally:
        redirecting.stop()
        elsewhere.stop()


def test_summary_prompt_shows_worked_examples_before_the_paper():
    # The examples are earlier chat turns, each answer showing n + EXTRA_CANDIDATES summaries that pass
    # the generator's own checks (a shown answer that broke the rules would teach breaking them).
    n = 4
    values = gs.prompt_values(n)
    paper = {"id": "x", "title": "A title here", "abstract": "An abstract about things."}
    msgs = gs.SUMMARY_PROMPT.messages(paper, **values)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(gs.EXAMPLES) + ["user"]
    assert msgs[-1]["content"].endswith("Title: A title here\nAbstract: An abstract about things.")
    assert f"Write {n + gs.EXTRA_CANDIDATES} different" in msgs[-1]["content"]
    for (title, abstract, _), answer in zip(gs.EXAMPLES, msgs[2:-1:2]):
        shown = json.loads(answer["content"])["summaries"]
        assert len(shown) == n + gs.EXTRA_CANDIDATES
        example = {"title": title, "abstract": abstract}
        assert [gs.summary_problem(t, example, shown[:i]) for i, t in enumerate(shown)] == [None] * len(shown)
    # Another n changes what is asked and shown, hence the hash written into every line.
    assert gs.SUMMARY_PROMPT.sha256(gs.prompt_values(3)) != gs.SUMMARY_PROMPT.sha256(values)
    assert len(json.loads(gs.SUMMARY_PROMPT.messages(paper, **gs.prompt_values(3))[2]["content"])["summaries"]) == 5


def test_latex_backslashes_in_an_answer_are_read_as_text():
    # Models copy LaTeX from abstracts ("\alpha", "\theta") into JSON strings unescaped: invalid JSON
    # that is still the answer. Real escapes keep their meaning; anything else stays refused.
    from semcse.llm import InvalidOutput, parse_json

    got = parse_json(r'{"summaries": ["an \alpha-attractor with \theta \u00e9 and \"quotes\"", "line\n break", "\nu"]}')
    # (before a letter, \n \t \b \f \r are LaTeX, \nu or \theta, once the answer is invalid JSON at all)
    assert got == {"summaries": ['an \\alpha-attractor with \\theta é and "quotes"', "line\n break", "\\nu"]}
    # A remark after the object (small models add one) is not part of the answer.
    assert parse_json('{"summaries": ["a", "b"]}\nI hope these help!') == {"summaries": ["a", "b"]}
    with pytest.raises(InvalidOutput, match=r"not valid JSON \(Expecting"):
        parse_json('{"summaries": ["unterminated"')
