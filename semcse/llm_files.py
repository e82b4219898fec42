"""The files of an LLM generation run (llm.generate): who owns them, resume, compaction, run settings.

For an output `data/NAME.jsonl`:
- data/NAME.jsonl              good items only, one line per paper, with provenance. Appended and
                               flushed as each paper finishes; the final pass rewrites it sorted by
                               id with one line per paper (atomically).
- data/NAME.failures.jsonl     papers that failed: the reason and the raw text of every attempt.
- data/NAME.settings.json      the resolved settings of the last run (no key), its prompt and stats.
A generator writes only into files it made itself (check_own_file): pointed at a corpus or at
summaries from another source, it would append to them and then compact their lines away.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Any

import settings
from load_data import DataError, iter_records, keep_lines
from semcse import files
from settings import Config

# Every line a generator writes carries these (llm.Caller._record); a file of papers or of human
# summaries has none of them. "prompt" is "<prompt name>/v<version>": the name tells the generators apart.
PROVENANCE = ("model", "prompt", "prompt_sha256")


def sibling(out_file: str, suffix: str) -> str:
    """data/NAME.jsonl -> data/NAME<suffix>, e.g. ".failures.jsonl"."""
    stem = out_file[: -len(".jsonl")] if out_file.endswith(".jsonl") else out_file
    return stem + suffix


def check_own_file(path: str, prompt_name: str, field: str | None, setting: str) -> None:
    """Refuse (DataError naming the file, line and `setting`) a file that exists and has a line this
    generator did not write: no provenance fields, another prompt's name, or no `field` (None for the
    failures file, whose lines have "reason" instead). Reads only; a truncated last line is allowed."""
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not a JSON Lines file (setting '{setting}')")
    for line, _, r in iter_records(path, allow_truncated_tail=True):
        missing = [k for k in PROVENANCE + (field or "reason",) if k not in r]
        name = str(r.get("prompt", "")).rsplit("/v", 1)[0]
        if missing or name != prompt_name:
            why = f"no field {', '.join(map(repr, missing))}" if missing else f"prompt '{r.get('prompt')}'"
            raise DataError(f"{path}:{line}: not written by this generator ({why}; expected lines of prompt "
                            f"'{prompt_name}'): refusing to append to it; choose another file (setting '{setting}')")


def done_ids(path: str, model: str, prompt_sha: str) -> set[str]:
    """Ids of the papers with a line from this model and prompt: a rerun skips them."""
    if not os.path.exists(path):
        return set()
    return {r["id"] for _, _, r in iter_records(path, allow_truncated_tail=True)
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


def compact_failures(path: str, succeeded: set[str]) -> None:
    """Keep the latest failure of each paper with no good line from this model and prompt; no file if none."""
    if not os.path.exists(path):
        return
    latest = {r["id"]: offset for _, offset, r in iter_records(path, allow_truncated_tail=True)
              if r.get("id") not in succeeded}
    if latest:
        keep_lines(path, latest)
    else:
        os.remove(path)


def save_run_settings(out_file: str, cfg: Config, prompt: Any, prompt_sha: str, stats: dict,
                      public_url: str) -> str:
    """NAME.settings.json next to the output: the last run's resolved settings (settings.public_settings
    drops the key), its prompt template with id and hash, and the stats of every run so far."""
    target = sibling(out_file, ".settings.json")
    runs = []
    if os.path.exists(target):
        try:
            runs = json.load(open(target, encoding="utf-8")).get("runs", [])
        except (ValueError, AttributeError):
            print(f"warning: {target}: not readable JSON; starting its run history anew", file=sys.stderr)
    runs.append(dict(stats, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     model=cfg.llm_model, prompt_sha256=prompt_sha, temperature=cfg.llm_temperature))
    public = settings.public_settings(cfg, llm_base_url=public_url,
                                      prompt={"id": prompt.id, "sha256": prompt_sha, "system": prompt.system,
                                              "user": prompt.user, "retry": prompt.retry,
                                              "examples": prompt.examples}, runs=runs)
    return files.write_json_atomic(target, public, indent=2, sort_keys=True)
