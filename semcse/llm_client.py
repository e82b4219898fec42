"""Settings, client and secrets of the LLM generators (llm.py): the environment and command line,
the openai client, and keeping the key and a URL's credentials out of everything printed or written."""
from __future__ import annotations

import os
import signal
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import openai

import settings
from semcse import cli
from settings import Config, SettingsError

NO_KEY = "no-key"  # local servers need no key, but the openai client refuses to start without one


class GenerationError(settings.UserError, ValueError):
    """A run that cannot start or go on; the message names the setting, file or server. A UserError,
    so cli.cli prints it as one line `error: ...` (exit code 2)."""



def apply_environment(environ: dict | None = None) -> None:
    """OPENAI_BASE_URL / OPENAI_API_KEY override settings.py. Call before cli.parse_command_line,
    so that the command line wins over both: command line > environment > settings.py."""
    environ = os.environ if environ is None else environ
    for var, key in (("OPENAI_BASE_URL", "llm_base_url"), ("OPENAI_API_KEY", "llm_api_key")):
        if environ.get(var, "").strip():
            settings.update(**{key: environ[var].strip()})


def command_line(run: Callable[..., Any], argv: list[str] | None = None, flags: dict | None = None) -> None:
    """A generator script's command line: environment, then --key=value overrides and the script's own
    flags (--dry-run, --limit=N and `flags`), passed to run(**flags); cli.cli's error policy
    (one line, exit code 2; --debug for the traceback)."""
    apply_environment()  # before the command line, which wins over the environment

    def main(**options: Any) -> Any:
        try:
            return run(**options)
        except KeyboardInterrupt:
            # The run saved what was done; from here the process only prints a line and exits: a
            # further Ctrl-C would only turn that into a traceback.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise
    cli.cli(main, flags={"dry_run": False, "limit": 0, **(flags or {})}, argv=argv)


def make_client(cfg: Config) -> openai.OpenAI:
    """The openai client: it retries connection errors, timeouts, 408/409/429 and 5xx itself
    (exponential backoff, honouring Retry-After) `llm_http_retries` times."""
    # Redirects are not followed (the client would by default, resending the paper to wherever the
    # server points): data goes only to llm_base_url, and a redirect stops the run (Caller).
    return openai.OpenAI(base_url=cfg.llm_base_url, api_key=cfg.llm_api_key or NO_KEY,
                         max_retries=cfg.llm_http_retries, timeout=cfg.llm_timeout,
                         http_client=openai.DefaultHttpxClient(follow_redirects=False))


def server_host(url: str) -> str:
    """host:port of a base URL, without user:password@ (never written: it may hold credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def redact(text: str, cfg: Config) -> str:
    """Remove the key (and a base URL's credentials) from any text we print or store."""
    key = cfg.llm_api_key
    if len(key) >= 4:
        text = text.replace(key, "***")
    parts = urlsplit(cfg.llm_base_url)
    if parts.password:
        text = text.replace(parts.password, "***")
    return text


def public_url(url: str) -> str:
    """The base URL as it may be shown: without user:password@."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=server_host(url))) if parts.username or parts.password else url


def check_settings(cfg: Config) -> None:
    """Every setting in its range (settings.py holds the ranges; a Config built with dataclasses.replace
    skips them) and a base URL with a host; GenerationError naming the setting."""
    try:
        settings.check(cfg)
    except SettingsError as e:
        raise GenerationError(str(e)) from None
    if not urlsplit(cfg.llm_base_url).hostname:
        raise GenerationError(f"setting 'llm_base_url' is not a URL: '{public_url(cfg.llm_base_url)}'")


def request_body(cfg: Config, messages: list[dict], json_mode: bool) -> dict:
    """The chat completion request, as sent (the key goes in a header, never here)."""
    body = dict(model=cfg.llm_model, messages=messages, temperature=cfg.llm_temperature,
                top_p=cfg.llm_top_p, max_tokens=cfg.llm_max_tokens)
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def dry_run_request(cfg: Config, prompt: Any, paper: dict, values: dict) -> dict:
    """What --dry-run prints: the first request as it would be sent, and where to."""
    body = request_body(cfg, prompt.messages(paper, **values), cfg.llm_response_format != "none")
    return {"POST": public_url(cfg.llm_base_url).rstrip("/") + "/chat/completions", "paper": paper["id"],
            "prompt": prompt.id, "prompt_sha256": prompt.sha256(values), "body": body}
