"""Shared machinery of the LLM generation scripts (generate_train_summaries.py, generate_search_queries.py).

One paper -> one chat request to any OpenAI-compatible server (vLLM, llama.cpp's server, OpenAI)
through the `openai` client -> one JSON answer, validated -> one JSON line appended to the output.

Files, for an output `data/NAME.jsonl`:
- data/NAME.jsonl              good items only, one line per paper, with provenance. Appended and
                               flushed as each paper finishes; the final pass rewrites it sorted by
                               id with one line per paper (atomically).
- data/NAME.failures.jsonl     papers that failed: the reason and the raw text of every attempt.
- data/NAME.settings.json      the resolved settings of the last run (no key), its prompt and stats.
A rerun skips papers already in NAME.jsonl with the same model and prompt hash, and tolerates the
truncated last line of a killed run. The key is never printed or written (see `redact`).
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
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import openai
from tqdm import tqdm

import settings
from load_data import DataError, append_jsonl, iter_corpus, iter_jsonl, iter_records, keep_lines, repair_tail

NO_KEY = "no-key"  # local servers need no key, but the openai client refuses to start without one


class InvalidOutput(ValueError):
    """The model answered, but not with what we asked for; worth another try."""


class GenerationError(ValueError):
    """A run that cannot start or go on; the message names the setting, file or server. A ValueError,
    so settings.cli prints it as one line `error: ...` (exit code 2)."""


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

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version}"

    def sha256(self, values: dict | None = None) -> str:
        """Hash of the template and its fixed values (e.g. n): the exact instructions, less the paper."""
        parts = [self.name, self.version, self.system, self.user, self.retry]
        parts += [sorted(values.items())] if values else []
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:16]

    def messages(self, paper: dict, **values: Any) -> list[dict]:
        user = string.Template(self.user).substitute(title=paper["title"], abstract=paper["abstract"], **values)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def retry_messages(self, messages: list[dict], answer: str, reason: str) -> list[dict]:
        # Small models tend to give the same answer to the same prompt, even when sampling: show
        # them their answer and what was wrong with it.
        return messages + [{"role": "assistant", "content": answer},
                           {"role": "user", "content": string.Template(self.retry).substitute(reason=reason)}]


def generate(kind: str, prompt: Prompt, field: str, parse: Callable[[dict, dict], Any], corpus_file: str,
             out_file: str, cfg: dict, values: dict | None = None, limit: int = 0, dry_run: bool = False) -> dict:
    """Generate `field` for every paper of `corpus_file` into `out_file`; returns the run's stats.

    `parse(json_object, paper)` returns the value to store or raises InvalidOutput. Bad settings or
    input files (DataError) and unrecoverable server errors raise ValueErrors naming the cause,
    after what was done is written and compacted.
    """
    _check(cfg)
    values = dict(values or {})
    # The corpus is streamed twice: once to check every line and count (before anything is sent),
    # once to feed the workers; memory holds the ids and the papers in flight, not the corpus.
    def papers() -> Iterator[dict]:
        return islice(iter_corpus(corpus_file), limit or None)

    if dry_run:
        first = next(papers(), None)
        if first is None:
            raise DataError(f"{corpus_file}: no papers in file")
        print(json.dumps(_dry_run_request(cfg, prompt, first, values), indent=2, ensure_ascii=False))
        return {"dry_run": True}
    ids = [p["id"] for p in papers()]
    if not ids:
        raise DataError(f"{corpus_file}: no papers in file")
    failures_file = _sibling(out_file, ".failures.jsonl")
    os.makedirs(os.path.dirname(out_file) or ".", exist_ok=True)
    repair_tail(out_file)
    repair_tail(failures_file)
    out = open(out_file, "a", encoding="utf-8")
    try:
        fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)  # two runs appending to one file would repeat work
    except BlockingIOError:
        raise GenerationError(f"{out_file} is being written by another run") from None
    prompt_sha = prompt.sha256(values)
    done = _done_ids(out_file, cfg["llm_model"], prompt_sha)
    todo = (p for p in papers() if p["id"] not in done)
    stats = {"kind": kind, "done": 0, "failed": 0, "skipped": sum(i in done for i in ids), "papers": len(ids)}
    caller = Caller(cfg, prompt, prompt_sha, field, parse, values)
    start = time.time()
    bar = tqdm(total=len(ids), initial=stats["skipped"], desc=kind, unit="paper", dynamic_ncols=True)
    bar.set_postfix(done=0, failed=0, skipped=stats["skipped"])
    pool = ThreadPoolExecutor(max_workers=cfg["llm_concurrency"])
    fatal, finished, interrupted = None, False, False
    try:
        with open(failures_file, "a", encoding="utf-8") as failed:
            for fut in _completed(pool, caller, todo, window=2 * cfg["llm_concurrency"]):
                try:
                    record = fut.result()
                except FatalServerError as e:
                    fatal = e
                    break
                ok = record.pop("status") == "ok"
                append_jsonl(out if ok else failed, record)
                stats["done" if ok else "failed"] += 1
                bar.update(1)
                bar.set_postfix(done=stats["done"], failed=stats["failed"], skipped=stats["skipped"])
            finished = fatal is None
    except KeyboardInterrupt:
        interrupted = True  # raised again below, once what is done is compacted
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)  # on any error: drop queued papers, keep what is written
        bar.close()
        stats["seconds"] = round(time.time() - start, 1)
        stats["papers_per_minute"] = round(60 * (stats["done"] + stats["failed"]) / max(stats["seconds"], 1e-9), 2)
        kept = compact(out_file, field, cfg["llm_model"], prompt_sha)
        _compact_failures(failures_file, _done_ids(out_file, cfg["llm_model"], prompt_sha))
        out.close()  # releases the lock
        save_run_settings(out_file, cfg, prompt, prompt_sha, stats)
    print(f"{out_file}: {stats['done']} done, {stats['failed']} failed, {stats['skipped']} skipped "
          f"in {stats['seconds']}s ({stats['papers_per_minute']} papers/min); {len(kept)} papers in file"
          + (f"; failures with raw answers in {failures_file}" if stats["failed"] else ""), file=sys.stderr)
    if interrupted:
        raise KeyboardInterrupt
    if fatal is not None:
        raise FatalServerError(redact(str(fatal), cfg))
    return stats


def _completed(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator[Future]:
    """Futures of fn(item) as they finish, with at most `window` submitted and unfinished at a time, so
    items are drawn from the stream only as workers free up."""
    pending: set[Future] = set()
    for item in items:
        pending.add(pool.submit(fn, item))
        if len(pending) >= window:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from finished
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from finished


# ----------------------------------------------------------------------------------------------
# Settings, client, secrets


def apply_environment(environ: dict | None = None) -> None:
    """OPENAI_BASE_URL / OPENAI_API_KEY override settings.py. Call before settings.parse_command_line,
    so that the command line wins over both: command line > environment > settings.py."""
    environ = os.environ if environ is None else environ
    for var, key in (("OPENAI_BASE_URL", "llm_base_url"), ("OPENAI_API_KEY", "llm_api_key")):
        if environ.get(var, "").strip():
            settings.update(**{key: environ[var].strip()})


def command_line(generate_fn: Callable[..., dict], argv: list[str] | None = None) -> None:
    """A generator script's command line: environment, then --key=value overrides and --dry-run / --limit=N,
    with settings.cli's error policy (one line, exit code 2; --debug for the traceback)."""
    apply_environment()  # before the command line, which wins over the environment
    settings.cli(lambda dry_run, limit: generate_fn(limit=limit, dry_run=dry_run),
                 flags={"dry_run": False, "limit": 0}, argv=argv)


def make_client(cfg: dict) -> openai.OpenAI:
    """The openai client: it retries connection errors, timeouts, 408/409/429 and 5xx itself
    (exponential backoff, honouring Retry-After) `llm_http_retries` times."""
    # Redirects are not followed (the client would by default, resending the paper to wherever the
    # server points): data goes only to llm_base_url, and a redirect stops the run (Caller).
    return openai.OpenAI(base_url=cfg["llm_base_url"], api_key=cfg["llm_api_key"] or NO_KEY,
                         max_retries=cfg["llm_http_retries"], timeout=cfg["llm_timeout"],
                         http_client=openai.DefaultHttpxClient(follow_redirects=False))


def server_host(url: str) -> str:
    """host:port of a base URL, without user:password@ (never written: it may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def redact(text: str, cfg: dict) -> str:
    """Remove the key (and a base URL's credentials) from any text we print or store."""
    key = cfg.get("llm_api_key") or ""
    if len(key) >= 4:
        text = text.replace(key, "***")
    parts = urlsplit(cfg.get("llm_base_url", ""))
    if parts.password:
        text = text.replace(parts.password, "***")
    return text


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=server_host(url))) if parts.username or parts.password else url


def _check(cfg: dict) -> None:
    for key, low in (("llm_concurrency", 1), ("llm_retries", 0), ("llm_http_retries", 0), ("llm_max_tokens", 1)):
        if cfg[key] < low:
            raise GenerationError(f"setting '{key}' must be >= {low}, got {cfg[key]}")
    if cfg["llm_response_format"] not in ("auto", "json_object", "none"):
        raise GenerationError(f"setting 'llm_response_format' must be auto, json_object or none, "
                         f"got '{cfg['llm_response_format']}'")
    if not urlsplit(cfg["llm_base_url"]).hostname:
        raise GenerationError(f"setting 'llm_base_url' is not a URL: '{_public_url(cfg['llm_base_url'])}'")


def save_run_settings(out_file: str, cfg: dict, prompt: Prompt, prompt_sha: str, stats: dict) -> str:
    """NAME.settings.json next to the output: the last run's resolved settings (settings.public_settings
    drops the key), its prompt template with id and hash, and the stats of every run so far."""
    target = _sibling(out_file, ".settings.json")
    runs = []
    if os.path.exists(target):
        try:
            runs = json.load(open(target, encoding="utf-8")).get("runs", [])
        except (ValueError, AttributeError):
            print(f"warning: {target}: not readable JSON; starting its run history anew", file=sys.stderr)
    runs.append(dict(stats, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     model=cfg["llm_model"], prompt_sha256=prompt_sha, temperature=cfg["llm_temperature"]))
    public = settings.public_settings(cfg, llm_base_url=_public_url(cfg["llm_base_url"]),
                                      prompt={"id": prompt.id, "sha256": prompt_sha, "system": prompt.system,
                                              "user": prompt.user, "retry": prompt.retry}, runs=runs)
    return settings.write_json_atomic(target, public, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# One paper: request, validate, retry


class Caller:
    """Called from worker threads with one paper; returns a record with status "ok" or "failed"."""

    def __init__(self, cfg: dict, prompt: Prompt, prompt_sha: str, field: str, parse: Callable[[dict, dict], Any],
                 values: dict):
        self.cfg, self.prompt, self.prompt_sha, self.field = cfg, prompt, prompt_sha, field
        self.parse, self.values = parse, values
        self.client = make_client(cfg)
        self.json_mode = cfg["llm_response_format"] != "none"  # "auto" turns it off if the server says no
        self.lock = threading.Lock()

    def __call__(self, paper: dict) -> dict:
        cfg, start = self.cfg, time.time()
        first = messages = self.prompt.messages(paper, **self.values)
        tries: list[dict] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        for attempt in range(1, cfg["llm_retries"] + 2):
            try:
                response, json_mode = self._send(messages)
            except openai.APITimeoutError as e:
                return self._record(paper, start, "failed", reason=f"timeout after {cfg['llm_timeout']}s and "
                                    f"{cfg['llm_http_retries']} client retries ({type(e).__name__})", attempts=tries)
            except openai.APIConnectionError as e:
                raise FatalServerError(f"cannot reach {server_host(cfg['llm_base_url'])} (setting llm_base_url / "
                                       f"OPENAI_BASE_URL): {e}") from None
            except openai.APIStatusError as e:
                if 300 <= e.status_code < 400:
                    raise FatalServerError(f"{server_host(cfg['llm_base_url'])} answered HTTP {e.status_code}, a "
                                           f"redirect, not followed: data goes only to llm_base_url (set it to "
                                           f"the address the server redirects to, if you trust it)") from None
                if e.status_code in (401, 403, 404):
                    raise FatalServerError(f"{server_host(cfg['llm_base_url'])} answered HTTP {e.status_code} "
                                           f"for model '{cfg['llm_model']}' (check llm_model / llm_base_url / "
                                           f"OPENAI_API_KEY): {_short(e.message)}") from None
                return self._record(paper, start, "failed", attempts=tries, reason=f"HTTP {e.status_code} after "
                                    f"{cfg['llm_http_retries']} client retries: {_short(e.message)}")
            except openai.OpenAIError as e:  # e.g. a response body that is not a chat completion
                return self._record(paper, start, "failed", attempts=tries,
                                    reason=f"{type(e).__name__}: {_short(str(e))}")
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content if choice else None) or ""
            finish = choice.finish_reason if choice else None
            if response.usage:
                usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                usage["completion_tokens"] += response.usage.completion_tokens or 0
            try:
                value = self.parse(parse_json(text), paper)
            except InvalidOutput as e:
                hint = " (finish_reason=length: raise llm_max_tokens)" if finish == "length" else ""
                tries.append({"reason": f"{e}{hint}", "finish_reason": finish, "raw": text})
                messages = self.prompt.retry_messages(first, text, str(e))
                continue
            retried = {"retried_for": [t["reason"] for t in tries]} if tries else {}
            return self._record(paper, start, "ok", value=value, finish_reason=finish, attempts=attempt,
                                usage=usage, served_model=response.model, json_mode=json_mode, **retried)
        return self._record(paper, start, "failed", attempts=tries, usage=usage,
                            reason=f"no valid answer in {len(tries)} attempts: {tries[-1]['reason']}")

    def _send(self, messages: list[dict]) -> tuple[Any, bool]:
        cfg, json_mode = self.cfg, self.json_mode
        try:
            return self.client.chat.completions.create(**request_body(cfg, messages, json_mode)), json_mode
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            if not json_mode or cfg["llm_response_format"] != "auto":
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
        record.update(model=cfg["llm_model"], served_model=info.pop("served_model", None),
                      server=server_host(cfg["llm_base_url"]), prompt=self.prompt.id,
                      prompt_sha256=self.prompt_sha,
                      sampling={"temperature": cfg["llm_temperature"], "top_p": cfg["llm_top_p"],
                                "max_tokens": cfg["llm_max_tokens"]},
                      response_format="json_object" if info.pop("json_mode", False) else None)
        record.update(info)
        record.update(seconds=round(time.time() - start, 2),
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if status != "ok":
            record["reason"] = redact(record["reason"], cfg)
            for t in record.get("attempts") or []:
                t["raw"], t["reason"] = redact(t["raw"], cfg), redact(t["reason"], cfg)
        return record


def parse_json(text: str) -> dict:
    """The JSON object in a model's answer; tolerates a ```json fence (servers without JSON mode)."""
    text = text.strip()
    if not text:
        raise InvalidOutput("empty content")
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
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


def request_body(cfg: dict, messages: list[dict], json_mode: bool) -> dict:
    """The chat completion request, as sent (the key goes in a header, never here)."""
    body = dict(model=cfg["llm_model"], messages=messages, temperature=cfg["llm_temperature"],
                top_p=cfg["llm_top_p"], max_tokens=cfg["llm_max_tokens"])
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _dry_run_request(cfg: dict, prompt: Prompt, paper: dict, values: dict) -> dict:
    body = request_body(cfg, prompt.messages(paper, **values), cfg["llm_response_format"] != "none")
    return {"POST": _public_url(cfg["llm_base_url"]).rstrip("/") + "/chat/completions", "paper": paper["id"],
            "prompt": prompt.id, "prompt_sha256": prompt.sha256(values), "body": body}


# ----------------------------------------------------------------------------------------------
# Files: append, resume, repair, compact


def _sibling(out_file: str, suffix: str) -> str:
    stem = out_file[: -len(".jsonl")] if out_file.endswith(".jsonl") else out_file
    return stem + suffix


def _done_ids(path: str, model: str, prompt_sha: str) -> set[str]:
    if not os.path.exists(path):
        return set()
    return {r["id"] for _, r in iter_jsonl(path, allow_truncated_tail=True)
            if r.get("model") == model and r.get("prompt_sha256") == prompt_sha}


def compact(path: str, field: str, model: str, prompt_sha: str) -> list[str]:
    """Rewrite `path` atomically: one line per paper, sorted by id. A paper's line from this model and
    prompt wins (the first, if repeated); else its newest line from an earlier generation is kept."""
    if not os.path.exists(path):
        return []
    current: dict[str, int] = {}  # id -> byte offset of the line kept
    older: dict[str, int] = {}
    for line, offset, r in iter_records(path, allow_truncated_tail=True):
        if not isinstance(r.get("id"), str) or field not in r:
            raise DataError(f"{path}:{line}: expected fields 'id' and '{field}'")
        if r.get("model") == model and r.get("prompt_sha256") == prompt_sha:
            current.setdefault(r["id"], offset)
        else:
            older[r["id"]] = offset
    keep = {**older, **current}
    keep_lines(path, keep)
    return sorted(keep)


def _compact_failures(path: str, succeeded: set[str]) -> None:
    """Keep the latest failure of each paper with no good line from this model and prompt; no file if none."""
    if not os.path.exists(path):
        return
    latest = {r["id"]: offset for _, offset, r in iter_records(path, allow_truncated_tail=True)
              if r.get("id") not in succeeded}
    if latest:
        keep_lines(path, latest)
    else:
        os.remove(path)
