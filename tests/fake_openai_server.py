"""A small OpenAI-compatible chat server for tests and benchmarks (stdlib only, 127.0.0.1).

POST /v1/chat/completions answers, for the first user message (the paper; later ones are retries):
- a valid JSON answer made from the message: {"summaries": [...]} if the prompt asks for summaries
  (as many as its "Write N different summaries" says), else {"query": "..."};
- or, if the message contains a directive `@fake:MODE:COUNT`, MODE for the first COUNT requests with
  that message, then the valid answer. MODE is one of:
    invalid  content that is not JSON          empty   empty content
    fence    valid JSON inside a ```json fence  dupes   summaries that are all the same
    twobad   2 valid summaries, 2 that break the summary prompt's rules
    length   half a JSON object, finish_reason "length"
    slow     the valid answer after `slow_seconds` (a server busy with other work)
    429 / 500 / 400 / 401  that HTTP status (429 and 5xx with a tiny Retry-After, so clients retry fast)
  and malformed 200 replies, as broken proxies and servers send them:
    html      an HTML page (Content-Type text/html)    badjson    Content-Type JSON, body not JSON
    nullmsg   "message": null                          nochoices  "choices": []
    nonstring "content" a JSON object, not a string    cut        half the body, then the connection closes
    oddusage  valid content, "usage": {"prompt_tokens": "many", "completion_tokens": null}
    nousage   valid content, no "usage"
Server-wide options: `latency` (seconds per request), `reject_response_format` (400 for requests
that send response_format, like a server that does not know it), `expected_key` (401 otherwise),
`redirect_to` (a base URL: every POST is answered 307 to the same path there).
GET /_stats returns counts: total requests, requests per paper, requests with response_format or
with a retry's feedback, the most requests in flight, and whether the expected key arrived.
The key itself is never echoed.

    python tests/fake_openai_server.py --port=8001 --latency=0.05   # standalone, for bench/
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIRECTIVE = re.compile(r"@fake:(\w+):(\d+)")


class FakeOpenAIServer:
    """Start with `.start()` (a daemon thread on a free port), stop with `.stop()`; `.base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 reject_response_format: bool = False, expected_key: str | None = None,
                 redirect_to: str | None = None, slow_seconds: float = 30.0):
        self.latency, self.reject_response_format, self.expected_key = latency, reject_response_format, expected_key
        self.slow_seconds = slow_seconds
        self.redirect_to = redirect_to
        self.lock = threading.Lock()
        self.seen: Counter = Counter()       # requests per message (its paper marker, or its hash)
        self.stats = Counter()               # requests, with_response_format, key_ok/key_bad, max_inflight
        self.inflight = 0
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = _QuietServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> dict:
        with self.lock:
            return {"stats": dict(self.stats), "seen": dict(self.seen)}

    # -- the answer to one request: (HTTP status, JSON body, extra headers)
    def answer(self, body: dict, auth: str | None) -> tuple[int, dict, dict]:
        messages = body.get("messages", [])
        # The paper's message: the last user turn with an abstract (worked examples come before it,
        # retries after it without one), else the first user turn.
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        own = [i for i in users if "Abstract:" in (messages[i].get("content") or "")]
        at = own[-1] if own else (users[0] if users else -1)
        user = (messages[at].get("content") or "") if at >= 0 else ""
        with self.lock:  # counted on arrival, so a snapshot right after a client gives up is complete
            self.inflight += 1
            self.stats["max_inflight"] = max(self.stats["max_inflight"], self.inflight)
            self.stats["requests"] += 1
            self.seen[_paper_key(user)] += 1
            count = self.seen[_paper_key(user)]
            if "response_format" in body:
                self.stats["with_response_format"] += 1
            if at + 1 < len(messages):
                self.stats["with_feedback"] += 1
            if self.expected_key is not None:
                self.stats["key_ok" if auth == f"Bearer {self.expected_key}" else "key_bad"] += 1
        try:
            if self.latency:
                time.sleep(self.latency)
            if any(m.group(1) == "slow" and count <= int(m.group(2)) for m in DIRECTIVE.finditer(user)):
                time.sleep(self.slow_seconds)
            return self._answer(body, auth, user, count)
        finally:
            with self.lock:
                self.inflight -= 1

    def _answer(self, body: dict, auth: str | None, user: str, count: int) -> tuple[int, dict, dict]:
        if self.expected_key is not None and auth != f"Bearer {self.expected_key}":
            return 401, _error("Incorrect API key provided.", "invalid_api_key"), {}
        if self.reject_response_format and "response_format" in body:
            return 400, _error("Unrecognized request argument supplied: response_format", None), {}
        mode = None
        for m in DIRECTIVE.finditer(user):
            if count <= int(m.group(2)):
                mode = m.group(1)
                break
        if mode in ("429", "500", "503", "400", "401", "404"):
            return int(mode), _error(f"fake {mode}", None), {"retry-after-ms": "5"}
        if mode == "html":
            return 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
        if mode == "badjson":
            return 200, b'{"id": "chatcmpl-1", "choices": [', {}
        content, finish = _valid_content(user), "stop"
        if mode == "invalid":
            content = "Sure! Here are the summaries: first, second"
        elif mode == "empty":
            content = ""
        elif mode == "fence":
            content = f"```json\n{content}\n```"
        elif mode == "dupes":
            content = json.dumps({"summaries": ["The same summary of the whole work, given over and over again."] * 8})
        elif mode == "length":
            content, finish = content[: len(content) // 2], "length"
        elif mode == "twobad":  # the first two summaries valid, the others break the prompt's rules
            good = json.loads(content)["summaries"][:2]
            content = json.dumps({"summaries": good + ["In this paper we show that everything works well enough.",
                                                       "Results improve by 42 points on every single benchmark."]})
        words = len(content.split())
        reply = {"id": f"chatcmpl-{self.stats['requests']}", "object": "chat.completion",
                 "created": int(time.time()), "model": f"fake/{body.get('model')}",
                 "choices": [{"index": 0, "finish_reason": finish,
                              "message": {"role": "assistant", "content": content}}],
                 "usage": {"prompt_tokens": len(user.split()), "completion_tokens": words,
                           "total_tokens": len(user.split()) + words}}
        if mode == "nullmsg":
            reply["choices"][0]["message"] = None
        elif mode == "nochoices":
            reply["choices"] = []
        elif mode == "nonstring":
            reply["choices"][0]["message"]["content"] = json.loads(content)
        elif mode == "oddusage":
            reply["usage"] = {"prompt_tokens": "many", "completion_tokens": None}
        elif mode == "nousage":
            del reply["usage"]
        return 200, reply, {"X-Fake-Cut": "1"} if mode == "cut" else {}


def _paper_key(user: str) -> str:
    # Tests mark papers with "[paper pN]"; anything else is counted by the message's hash.
    m = re.search(r"\[paper (\w+)\]", user)
    return m.group(1) if m else hashlib.sha256(user.encode()).hexdigest()[:12]


# Summaries that pass generate_train_summaries' checks: distinct wording, no digits, no "we", and only
# two words taken from the abstract (its two longest), so never a copied run of words.
SUMMARY_TEMPLATES = [
    "A plain account of how {a} shapes {b}, with evidence that the effect holds broadly.",
    "Careful modelling of {b} gives a clearer picture of {a} than earlier approaches managed.",
    "Simple methods can capture both {a} and {b} without extra effort or special tools.",
    "Findings suggest {a} depends strongly on {b} across many different settings and conditions.",
    "An approach linking {b} to {a} turns out to be accurate, cheap and easy to reuse.",
    "Experiments reveal that treating {a} together with {b} improves understanding of both topics.",
]


def _valid_content(user: str) -> str:
    text = user.split("Abstract:", 1)[-1]
    words = re.findall(r"[A-Za-z]+", text)[:12] or ["nothing"]
    m = re.search(r"Write (\d+) different (?:one-sentence )?summaries", user)
    if m:
        n = int(m.group(1))
        a, b = (sorted(set(w.lower() for w in words) - {"paper", "fake"}, key=lambda w: (-len(w), w))
                + ["data", "models"])[:2]
        return json.dumps({"summaries": [SUMMARY_TEMPLATES[i % len(SUMMARY_TEMPLATES)].format(a=a, b=b)
                                         for i in range(n)]})
    return json.dumps({"query": f"how {' '.join(words[:8])}"})


def _error(message: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client killed mid-request (the resume test does that) is expected; anything else is not.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    fake: FakeOpenAIServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, _error("body is not JSON", None), {})
        if self.fake.redirect_to:
            with self.fake.lock:
                self.fake.stats["redirected"] += 1
            return self._send(307, {}, {"Location": self.fake.redirect_to.rstrip("/") + "/chat/completions"})
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, _error(f"no route {self.path}", None), {})
        self._send(*self.fake.answer(body, self.headers.get("Authorization")))

    def do_GET(self) -> None:
        if self.path == "/_stats":
            return self._send(200, self.fake.snapshot(), {})
        self._send(404, _error(f"no route {self.path}", None), {})

    def _send(self, status: int, body: dict | bytes, headers: dict) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cut = headers.pop("X-Fake-Cut", None)
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if cut:  # the announced length, then half of it and a closed connection
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


if __name__ == "__main__":
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    server = FakeOpenAIServer(port=int(opts.get("port", 8001)), latency=float(opts.get("latency", 0)),
                              slow_seconds=float(opts.get("slow_seconds", 30)))
    print(f"fake OpenAI server on {server.base_url}", flush=True)
    server.httpd.serve_forever()
