"""Shared machinery of the LLM generation scripts (generate_train_summaries.py, generate_search_queries.py).

One paper -> one chat request to any OpenAI-compatible server (vLLM, llama.cpp's server, OpenAI)
through the `openai` client -> one JSON answer, validated -> one JSON line appended to the output.
The output, failures and run-settings files, resume and compaction: llm_files.py. Worker threads
and Ctrl-C: llm_workers.py. A rerun skips papers already in the output with the same model and
prompt hash. The key is never printed or written (see `redact`).

Any answer is survivable: a reply that is not a chat completion (an HTML page, `message: null`,
content that is not text, no choices), a connection cut in the middle of the answer, or content
that fails validation is a failed attempt for that paper (retried, then recorded in the failures
file), never a crash. Only what would fail for every paper stops the run (FatalServerError).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import string
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Callable, Iterator

import openai
from tqdm import tqdm

from load_data import DataError, append_jsonl, iter_corpus, repair_tail
from semcse.llm_client import (GenerationError, apply_environment, check_settings, command_line,  # noqa: F401
                               dry_run_request, make_client, public_url, redact, request_body, server_host)
from semcse.llm_files import check_own_file, compact, compact_failures, done_ids, save_run_settings, sibling
from semcse.llm_workers import DaemonPool, StopOnCtrlC, completed
from settings import Config

class InvalidOutput(ValueError):
    """The model answered, but not with what we asked for; worth another try (the model is told why).

    `partial`: what of the answer is usable (e.g. 2 good summaries of 4), kept if no attempt gives
    all (the attempt with the longest `partial` wins); `dropped`: what was left out of it, and why."""

    def __init__(self, reason: str, partial: Any = None, dropped: list | None = None):
        super().__init__(reason)
        self.partial, self.dropped = partial, dropped or []


class BadResponse(InvalidOutput):
    """The server's reply is not a usable chat completion (an HTML page, no choices, `message: null`,
    a body that is not JSON): the same request is tried again, without feedback to the model."""

    def __init__(self, reason: str, raw: str = ""):
        super().__init__(reason)
        self.raw = raw


class FatalServerError(GenerationError):
    """Every further request would fail the same way (unreachable server, bad key, unknown model)."""


@dataclass(frozen=True)
class Prompt:
    """A named, versioned prompt. Bump `version` on any change: the hash goes into every output line,
    and a rerun regenerates papers whose line came from another prompt."""
    name: str
    version: int
    system: str
    user: str  # a string.Template: $title, $abstract and any extra values (e.g. $n)
    retry: str = "Your answer could not be used: $reason. Answer again, with only the JSON object asked for."
    # Worked examples shown before the paper, as earlier turns of the chat: ((title, abstract, answer), ...),
    # the answer a string.Template over the same values. A small model copies a shown answer's style
    # far better than it follows written rules; the server's prompt cache keeps their cost to once per slot.
    examples: tuple[tuple[str, str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version}"

    def sha256(self, values: dict | None = None) -> str:
        """Hash of the template and its fixed values (e.g. n): the exact instructions, less the paper."""
        parts = [self.name, self.version, self.system, self.user, self.retry]
        parts += [self.examples] if self.examples else []  # v1/v2 hashes unchanged
        parts += [sorted(values.items())] if values else []
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:16]

    def messages(self, paper: dict, **values: Any) -> list[dict]:
        def turn(title: str, abstract: str) -> dict:
            return {"role": "user", "content": string.Template(self.user).substitute(title=title, abstract=abstract,
                                                                                     **values)}
        shots = [m for title, abstract, answer in self.examples for m in (
            turn(title, abstract), {"role": "assistant", "content": string.Template(answer).substitute(**values)})]
        return [{"role": "system", "content": self.system}, *shots, turn(paper["title"], paper["abstract"])]

    def retry_messages(self, messages: list[dict], answer: str, reason: str, **values: Any) -> list[dict]:
        # Small models tend to give the same answer to the same prompt, even when sampling: show
        # them their answer and what was wrong with it.
        retry = string.Template(self.retry).substitute(reason=reason, **values)
        return messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": retry}]


def generate(kind: str, prompt: Prompt, field: str, parse: Callable[[dict, dict], Any], corpus_file: str,
             out_file: str, cfg: Config, values: dict | None = None, limit: int = 0, dry_run: bool = False,
             out_setting: str = "output file") -> dict:
    """Generate `field` for every paper of `corpus_file` into `out_file` (the setting `out_setting`, named
    in errors); returns the run's stats.

    `parse(json_object, paper)` returns the value to store or raises InvalidOutput. Bad settings or
    input files (DataError) and unrecoverable server errors raise ValueErrors naming the cause,
    after what was done is written and compacted. Ctrl-C stops within a moment (llm_workers.py),
    keeps what is written and raises KeyboardInterrupt.
    """
    check_settings(cfg)
    if limit < 0:  # islice would raise a bare ValueError
        raise GenerationError(f"option '--limit' must be >= 0 (0 = every paper), got {limit}")
    values = dict(values or {})
    # The corpus is streamed twice: once to check every line and count (before anything is sent),
    # once to feed the workers; memory holds the ids and the papers in flight, not the corpus.
    def papers() -> Iterator[dict]:
        return islice(iter_corpus(corpus_file), limit or None)

    if dry_run:
        first = next(papers(), None)
        if first is None:
            raise DataError(f"{corpus_file}: no papers in file")
        print(json.dumps(dry_run_request(cfg, prompt, first, values), indent=2, ensure_ascii=False))
        return {"dry_run": True}
    ids = [p["id"] for p in papers()]
    if not ids:
        raise DataError(f"{corpus_file}: no papers in file")
    failures_file = sibling(out_file, ".failures.jsonl")
    check_own_file(out_file, prompt.name, field, out_setting)  # before anything is written to either
    check_own_file(failures_file, prompt.name, None, out_setting)
    os.makedirs(os.path.dirname(out_file) or ".", exist_ok=True)
    out = open(out_file, "a", encoding="utf-8")
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)  # two runs appending to one file would repeat work
    except BlockingIOError:
        out.close()
        raise GenerationError(f"{out_file} is being written by another run") from None
    repair_tail(out_file)  # under the lock: the tail of a file that another run is writing is not ours to cut
    repair_tail(failures_file)
    prompt_sha = prompt.sha256(values)
    done = done_ids(out_file, cfg.llm_model, prompt_sha)
    stats = {"kind": kind, "done": 0, "failed": 0, "skipped": sum(i in done for i in ids), "papers": len(ids)}
    stop = threading.Event()
    with StopOnCtrlC(stop) as ctrl_c:  # also while compacting: a second Ctrl-C must not cut it short
        try:
            workers = max(1, min(cfg.llm_concurrency, len(ids) - stats["skipped"]))  # never more than papers
            fatal = _run(kind, Caller(cfg, prompt, prompt_sha, field, parse, values, stop), stats,
                         (p for p in papers() if p["id"] not in done), out, failures_file, stop, workers)
        except KeyboardInterrupt:  # raised by other code than our SIGINT handler (e.g. off the main thread)
            ctrl_c.fired, fatal = True, None
        finally:  # also on an unexpected error: what is written stays, compacted
            kept = compact(out_file, field, cfg.llm_model, prompt_sha)
            compact_failures(failures_file, done_ids(out_file, cfg.llm_model, prompt_sha))
            out.close()  # releases the lock
            save_run_settings(out_file, cfg, prompt, prompt_sha, stats, public_url(cfg.llm_base_url))
    interrupted = ctrl_c.fired
    print(f"{out_file}: {stats['done']} done, {stats['failed']} failed, {stats['skipped']} skipped "
          f"in {stats['seconds']}s ({stats['papers_per_minute']} papers/min); {len(kept)} papers in file"
          + (f"; failures with raw answers in {failures_file}" if stats["failed"] else ""), file=sys.stderr)
    if interrupted:
        raise KeyboardInterrupt
    if fatal is not None:
        raise FatalServerError(redact(str(fatal), cfg))
    return stats


def _run(kind: str, caller: "Caller", stats: dict, todo: Iterator[dict], out: Any, failures_file: str,
         stop: threading.Event, workers: int) -> Exception | None:
    """The loop of generate: papers to `workers` threads, their records to the files as they finish, until
    done, a fatal error (returned) or `stop`. Fills `stats`."""
    pool = DaemonPool(workers)
    bar = tqdm(total=stats["papers"], initial=stats["skipped"], desc=kind, unit="paper", dynamic_ncols=True)
    bar.set_postfix(done=0, failed=0, skipped=stats["skipped"])
    start, fatal = time.time(), None
    try:
        with open(failures_file, "a", encoding="utf-8") as failed:
            for fut in completed(pool, caller, todo, window=2 * workers, stop=stop):
                try:
                    record = fut.result()
                except FatalServerError as e:
                    fatal = e
                    break
                if record is None:  # a worker that saw the stop event
                    continue
                ok = record.pop("status") == "ok"
                append_jsonl(out if ok else failed, record)
                stats["done" if ok else "failed"] += 1
                bar.update(1)
                bar.set_postfix(done=stats["done"], failed=stats["failed"], skipped=stats["skipped"])
    finally:
        stop.set()  # workers stop before their next attempt; queued papers are dropped
        pool.shutdown()
        bar.close()
        seconds = time.time() - start
        stats["seconds"] = round(seconds, 1)
        stats["papers_per_minute"] = round(60 * (stats["done"] + stats["failed"]) / max(seconds, 1e-3), 2)
    return fatal


# ----------------------------------------------------------------------------------------------
# One paper: request, validate, retry


class Caller:
    """Called from worker threads with one paper; returns a record with status "ok" or "failed", or None
    once `stop` is set (checked before every attempt, so a stopped run sends nothing more)."""

    def __init__(self, cfg: Config, prompt: Prompt, prompt_sha: str, field: str, parse: Callable[[dict, dict], Any],
                 values: dict, stop: threading.Event | None = None):
        self.cfg, self.prompt, self.prompt_sha, self.field = cfg, prompt, prompt_sha, field
        self.parse, self.values, self.stop = parse, values, stop or threading.Event()
        self.client = make_client(cfg)
        self.json_mode = cfg.llm_response_format != "none"  # "auto" turns it off if the server says no
        self.lock = threading.Lock()

    def __call__(self, paper: dict) -> dict | None:
        cfg, start = self.cfg, time.time()
        first = messages = self.prompt.messages(paper, **self.values)
        tries: list[dict] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        best: dict = {}  # the attempt with the most usable output, kept if none is all good
        for attempt in range(1, cfg.llm_retries + 2):
            if self.stop.is_set():
                return None
            try:
                response, json_mode = self._send(messages)
                text, finish, served = read_answer(response, usage)
                value = self.parse(parse_json(text), paper)
            except BadResponse as e:  # the server's fault, not the model's: ask the same again
                tries.append({"reason": str(e), "raw": e.raw})
                continue
            except json.JSONDecodeError as e:  # a 200 reply declared as JSON that is not (the client lets it out)
                tries.append({"reason": f"the server's reply is not valid JSON ({e.msg})", "raw": _short(e.doc, 2000)})
                continue
            except InvalidOutput as e:
                hint = " (finish_reason=length: raise llm_max_tokens)" if finish == "length" else ""
                tries.append({"reason": f"{e}{hint}", "finish_reason": finish, "raw": text})
                if e.partial and len(e.partial) > len(best.get("value", ())):
                    best = dict(value=e.partial, dropped=e.dropped, finish_reason=finish, served_model=served,
                                json_mode=json_mode)
                messages = self.prompt.retry_messages(first, text, str(e), **self.values)
                continue
            except openai.OpenAIError as e:
                return self._request_failed(paper, start, e, tries)
            retried = {"retried_for": [t["reason"] for t in tries]} if tries else {}
            return self._record(paper, start, "ok", value=value, finish_reason=finish, attempts=attempt,
                                usage=usage, served_model=served, json_mode=json_mode, **retried)
        if best:  # e.g. 2 good summaries of 4 asked: better than none (see the parse function)
            return self._record(paper, start, "ok", attempts=len(tries), usage=usage, partial=True,
                                retried_for=[t["reason"] for t in tries], **best)
        return self._record(paper, start, "failed", attempts=tries, usage=usage,
                            reason=f"no valid answer in {len(tries)} attempts: {tries[-1]['reason']}")

    def _request_failed(self, paper: dict, start: float, e: openai.OpenAIError, tries: list[dict]) -> dict:
        """The record of a request that failed after the client's own retries, or FatalServerError."""
        cfg, host = self.cfg, server_host(self.cfg.llm_base_url)
        if isinstance(e, openai.APITimeoutError):
            reason = f"timeout after {cfg.llm_timeout}s and {cfg.llm_http_retries} client retries"
        elif isinstance(e, openai.APIConnectionError):
            if not _cut_mid_answer(e):
                raise FatalServerError(f"cannot reach {host} (setting llm_base_url / OPENAI_BASE_URL): {e}") from None
            reason = f"{host} closed the connection in the middle of its answer ({_short(str(e.__cause__))})"
        elif isinstance(e, openai.APIStatusError):
            if 300 <= e.status_code < 400:
                raise FatalServerError(f"{host} answered HTTP {e.status_code}, a redirect, not followed: data goes "
                                       f"only to llm_base_url (set it to the address the server redirects to, "
                                       f"if you trust it)") from None
            if e.status_code in (401, 403, 404):
                raise FatalServerError(f"{host} answered HTTP {e.status_code} for model '{cfg.llm_model}' (check "
                                       f"llm_model / llm_base_url / OPENAI_API_KEY): {_short(e.message)}") from None
            reason = f"HTTP {e.status_code} after {cfg.llm_http_retries} client retries: {_short(e.message)}"
        else:
            reason = f"{type(e).__name__}: {_short(str(e))}"
        return self._record(paper, start, "failed", attempts=tries, reason=reason)

    def _send(self, messages: list[dict]) -> tuple[Any, bool]:
        cfg, json_mode = self.cfg, self.json_mode
        try:
            return self.client.chat.completions.create(**request_body(cfg, messages, json_mode)), json_mode
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            if not json_mode or cfg.llm_response_format != "auto":
                raise
            # Maybe the server does not know response_format: if the same request without it goes
            # through, stop sending it (our prompts ask for JSON anyway, and we validate).
            response = self.client.chat.completions.create(**request_body(cfg, messages, False))
            with self.lock:
                if self.json_mode:
                    self.json_mode = False
                    print(f"warning: server rejected response_format ({_short(redact(e.message, cfg))}); "
                          "continuing without it", file=sys.stderr)
            return response, False

    def _record(self, paper: dict, start: float, status: str, value: Any = None, **info: Any) -> dict:
        cfg = self.cfg
        record = {"id": paper["id"], "status": status}
        if status == "ok":
            record[self.field] = value
        record.update(model=cfg.llm_model, served_model=info.pop("served_model", None),
                      server=server_host(cfg.llm_base_url), prompt=self.prompt.id,
                      prompt_sha256=self.prompt_sha,
                      sampling={"temperature": cfg.llm_temperature, "top_p": cfg.llm_top_p,
                                "max_tokens": cfg.llm_max_tokens},
                      response_format="json_object" if info.pop("json_mode", False) else None)
        record.update(info)
        record.update(seconds=round(time.time() - start, 2),
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if status != "ok":
            record["reason"] = redact(record["reason"], cfg)
            for t in record.get("attempts") or []:
                t["raw"], t["reason"] = redact(t["raw"], cfg), redact(t["reason"], cfg)
        return record


def read_answer(response: Any, usage: dict) -> tuple[str, str | None, str | None]:
    """(content, finish_reason, served model) of a chat completion, adding its token counts to `usage`;
    BadResponse if it is not one. The client does not validate answers: a 200 reply that is an HTML
    page comes back as a str, and `choices`, `message`, `content` and `usage` may hold anything."""
    choices = getattr(response, "choices", None)
    if isinstance(response, (str, bytes, list, dict)) or choices is None:
        raise BadResponse("the server's reply is not a chat completion", raw=_short(str(response), 2000))
    if not isinstance(choices, list) or not choices:
        raise BadResponse(f"the server's reply has no choices ({_short(repr(choices), 100)})")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if message is None or not isinstance(content, (str, type(None))):
        got = "no message" if message is None else f"message content of type {type(content).__name__}"
        raise BadResponse(f"the server's reply has {got}, not text", raw=_short(repr(content), 2000))
    for key in usage:  # token counts are bookkeeping: an odd or missing `usage` counts nothing
        n = getattr(getattr(response, "usage", None), key, None)
        usage[key] += n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0
    finish = getattr(choices[0], "finish_reason", None)
    served = getattr(response, "model", None)
    return content or "", finish if isinstance(finish, str) else None, served if isinstance(served, str) else None


def _cut_mid_answer(e: Exception) -> bool:
    """Whether a connection error happened after the server was reached (its reply broken off), rather
    than connecting: the first is one paper's failed attempt, the second stops the run."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in ("RemoteProtocolError", "ReadError"):  # httpx's names, whichever httpx
            return True
        e = e.__cause__ or e.__context__
    return False


# A JSON escape (kept), or a backslash that starts none (group 1 empty): "\\t" before a letter is LaTeX.
_LONE_BACKSLASH = re.compile(r'\\(\\|"|/|u[0-9a-fA-F]{4}|[bfnrt](?![A-Za-z]))?')


def parse_json(text: str) -> dict:
    """The JSON object in a model's answer; tolerates a ```json fence (servers without JSON mode), text
    after the object (a small model's remarks) and a lone backslash (LaTeX from the abstract, "\\alpha",
    which JSON does not allow unescaped)."""
    text = text.strip()
    if not text:
        raise InvalidOutput("empty content")
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    if fenced:
        text = fenced.group(1)
    first = json.JSONDecoder().raw_decode  # the first JSON value of the text, and where it ends
    try:
        obj = first(text)[0]
    except json.JSONDecodeError as e:
        if not e.msg.startswith("Invalid \\escape"):
            raise InvalidOutput(f"not valid JSON ({e.msg} at char {e.pos})") from None
        try:  # escape every backslash that starts no JSON escape (\\theta too: LaTeX), then try once more
            obj = first(_LONE_BACKSLASH.sub(lambda m: m.group(0) if m.group(1) else "\\\\", text))[0]
        except json.JSONDecodeError:
            raise InvalidOutput(f"not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidOutput(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def clean_text(text: Any) -> str:
    """One line of text with single spaces, or "" for anything that is not a string."""
    return re.sub(r"\s+", " ", text).strip() if isinstance(text, str) else ""


def _short(text: str, n: int = 300) -> str:
    text = clean_text(str(text))
    return text if len(text) <= n else text[:n] + "..."
