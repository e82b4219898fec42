"""Data formats, loaders, JSONL files, training pairs, the batch sampler, sentence halves, and the
embedded default corpus.

Formats (JSON Lines, UTF-8, one object a line, in `data/`):
- corpus file:    {"id": str, "title": str, "abstract": str, "label": str (optional), ...}
- summaries file: {"id": str, "summaries": [str, ...], ...provenance (model, prompt, source)}
- queries file:   {"id": str, "query": str, ...provenance}   (read by the benchmark, semcse/benchmark_tasks.py)

Files are read as streams, one line at a time (a line over MAX_LINE_BYTES is refused): memory holds
what a caller keeps, not the file. Whole files are written through files.atomic_write (temporary
file, fsync, rename); appends are one flushed and synced line per record, and repair_tail drops the
half line a killed writer leaves.

`python load_data.py` builds the default data from the installed `aclsum` package if missing.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from itertools import combinations
from typing import IO, Any

import settings
from semcse import cli
from semcse import files


class DataError(settings.UserError, ValueError):
    """Bad input data; the message names the file and line."""


def ensure_default_data(data_dir: str, overwrite: bool = False) -> dict[str, str]:
    """Build the embedded default data from the installed `aclsum` package, once.

    ACLSum (Takeshita et al., NAACL 2024) ships 250 ACL papers, split train/val/test 100/50/100,
    each with a title, its abstract (as tokenized sentences) and three human-written summaries
    (challenge, approach, outcome). We write:
      train_corpus.jsonl + train_summaries.jsonl : the 150 train+val papers (training/validation)
      benchmark_corpus.jsonl                     : the 100 test papers, never trained on
    Returns the paths. Existing files are kept unless `overwrite`.
    """
    paths = {
        "train_corpus": os.path.join(data_dir, "train_corpus.jsonl"),
        "train_summaries": os.path.join(data_dir, "train_summaries.jsonl"),
        "benchmark_corpus": os.path.join(data_dir, "benchmark_corpus.jsonl"),
    }
    if not overwrite and all(os.path.exists(p) for p in paths.values()):
        return paths
    try:
        from aclsum import ACLSum
    except ImportError:
        raise DataError("the default data needs the 'aclsum' package: pip install -r requirements.txt") from None
    source = "aclsum==0.1.2 (ACLSum, Takeshita et al. 2024; ACL Anthology papers)"
    train_docs = [d for split in ("train", "val") for d in ACLSum(split)]
    test_docs = list(ACLSum("test"))

    def paper(d: Any) -> dict:
        return {"id": d.id, "title": _detokenize(d.title),
                "abstract": _detokenize(" ".join(d.sentences["abstract"])), "source": source}

    write_jsonl_atomic(paths["train_corpus"], [paper(d) for d in train_docs])
    write_jsonl_atomic(paths["benchmark_corpus"], [paper(d) for d in test_docs])
    write_jsonl_atomic(paths["train_summaries"], [
        {"id": d.id, "summaries": [d.summaries[a] for a in ("challenge", "approach", "outcome")],
         "source": source + ", human-written aspect summaries: challenge, approach, outcome"}
        for d in train_docs])
    return paths


def _detokenize(text: str) -> str:
    # ACLSum's sentences are tokenized ("a model ( DC-GCN ) , which ."): undo the common spacing.
    text = re.sub(r"\s+([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{])\s+", r"\1", text)
    text = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d)\b", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------------------------
# Reading and writing JSONL


MAX_LINE_BYTES = 64 << 20  # a longer line is not a paper (a binary file, a whole corpus on one line):
                           # refusing it keeps the loaders' memory bounded by what they keep


def iter_lines(path: str) -> Iterator[tuple[int, int, bytes]]:
    """Stream a file as (line number, byte offset, raw line with its newline), one line in memory at a
    time; a line over MAX_LINE_BYTES raises DataError naming file:line."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a JSON Lines file")
    with open(path, "rb") as f:
        line, offset = 0, 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            line += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{line}: line longer than {MAX_LINE_BYTES >> 20} MiB; not a JSON Lines "
                                f"file of papers?")
            yield line, offset, raw
            offset += len(raw)


def iter_jsonl(path: str, allow_truncated_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Stream (line number, object) for each non-blank line; bad lines raise DataError naming file:line.

    With `allow_truncated_tail`, an unparsable *last* line without a newline (a run killed mid-write)
    is skipped instead of raising.
    """
    for line, _, obj in iter_records(path, allow_truncated_tail):
        yield line, obj


def iter_records(path: str, allow_truncated_tail: bool = False) -> Iterator[tuple[int, int, dict]]:
    """iter_jsonl with each line's byte offset: (line number, offset, object), for reading it again later."""
    for i, offset, raw in iter_lines(path):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{path}:{i}: not valid UTF-8") from None
        except json.JSONDecodeError as e:
            if allow_truncated_tail and not raw.endswith(b"\n"):  # only the last line can lack it
                print(f"warning: {path}:{i}: ignoring a truncated last line", file=sys.stderr)
                return
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, offset, obj


def _field(path: str, line: int, obj: dict, name: str, kind: type, required: bool = True) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(f"{path}:{line}: missing field '{name}'")
        return None
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}:{line}: field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{path}:{line}: field '{name}' is empty")
    return value


def iter_corpus(path: str) -> Iterator[dict]:
    """Stream papers {"id", "title", "abstract", "label" (None if absent or empty)} in file order, checking each
    line as it comes; memory holds one paper and the ids seen (to refuse a duplicate)."""
    seen: dict[str, int] = {}
    for line, obj in iter_jsonl(path):
        pid = _field(path, line, obj, "id", str)
        if pid in seen:
            raise DataError(f"{path}:{line}: duplicate id '{pid}' (first on line {seen[pid]})")
        seen[pid] = line
        label = obj.get("label")
        if label is not None and not isinstance(label, (str, int)):
            raise DataError(f"{path}:{line}: field 'label' must be a string, got {type(label).__name__}")
        label = None if label is None or not str(label).strip() else str(label)  # "" is no topic: unlabelled
        yield {"id": pid, "title": _field(path, line, obj, "title", str),
               "abstract": _field(path, line, obj, "abstract", str), "label": label}


def load_corpus(path: str) -> list[dict]:
    """All papers of a corpus file (iter_corpus) in a list; an empty file is an error."""
    papers = list(iter_corpus(path))
    if not papers:
        raise DataError(f"{path}: no papers in file")
    return papers


def at_least_two(papers: list[dict], path: str, user: str) -> list[dict]:
    """`papers`, if there are at least two: a rank among one candidate is always 1 (it would never move).
    `user` names what ranks them, for the message."""
    if len(papers) < 2:
        raise DataError(f"{path}: {len(papers)} paper; {user} ranks each paper's partner among all papers and "
                        f"needs at least 2")
    return papers


def papers_in_common(papers: list[dict], path: str) -> list[str]:
    """Titles of `papers` that are also in the corpus file `path`, compared by content (the title without
    case, punctuation or spacing), not by file name: a copy, a link or a re-export of one file is found."""
    other = {_plain_title(p["title"]) for p in iter_corpus(path)}
    return [p["title"] for p in papers if _plain_title(p["title"]) in other]


def _plain_title(title: str) -> str:
    return " ".join(re.findall(r"\w+", title.lower()))


def load_summaries(path: str, min_summaries: int = 2) -> dict[str, list[str]]:
    """{paper id: its distinct, non-empty summaries} of a summaries file, read in one streamed pass that
    checks every line (errors name file:line). Several lines of one id are merged in file order (an
    append-only generator writes one line per run). Papers with fewer than `min_summaries` are skipped,
    each skip reported, and the count printed.

    Plain lists in memory: for the paper's 350k abstracts x 4 summaries that is 7.6 s and 417 MiB,
    against 10.7 s / 140 MiB for a byte-offset index and 15.3 s / 394 MiB for `datasets`
    (bench/data_loading.py); simpler, and fast to index in every batch."""
    summaries: dict[str, list[str]] = {}
    for _, pid, texts in iter_summaries(path):
        summaries[pid] = _distinct(summaries.get(pid, []) + texts)
    skipped = [pid for pid, texts in summaries.items() if len(texts) < min_summaries]
    for pid in skipped:
        print(f"warning: {path}: paper '{pid}' has {len(summaries[pid])} distinct summaries, "
              f"needs {min_summaries}; skipped", file=sys.stderr)
    if skipped:
        print(f"{path}: skipped {len(skipped)} papers with fewer than {min_summaries} summaries, "
              f"kept {len(summaries) - len(skipped)}", file=sys.stderr)
    if len(skipped) == len(summaries):
        raise DataError(f"{path}: no paper has at least {min_summaries} distinct summaries")
    return {pid: texts for pid, texts in summaries.items() if len(texts) >= min_summaries}


def iter_summaries(path: str) -> Iterator[tuple[int, str, list[str]]]:
    """Stream (line number, paper id, its summaries) of a summaries file, each line checked: a string id
    and a list of strings (a corpus file or a string where the list belongs is named by file:line)."""
    for line, obj in iter_jsonl(path, allow_truncated_tail=True):
        pid = _field(path, line, obj, "id", str)
        texts = _field(path, line, obj, "summaries", list)
        if not all(isinstance(s, str) for s in texts):
            raise DataError(f"{path}:{line}: field 'summaries' must be a list of strings")
        yield line, pid, texts


def _distinct(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
    """Write records (any iterable, consumed as it is written) through files.atomic_write: the old
    file or the new one, never half."""
    with files.atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def append_jsonl(f: IO, record: dict) -> None:
    # One write per line, flushed and synced: a kill loses at most the line being written.
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def repair_tail(path: str) -> None:
    """A killed run may leave a half-written last line; appending after it would bury it mid-file.
    Reads only the last line (backwards from the end), so any file size is fine."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        cut = f.seek(0, os.SEEK_END)
        f.seek(cut - 1)
        if f.read(1) == b"\n":
            return
        while cut > 0:  # the start of the last line: after the last newline, found in 64 KiB steps back
            step = min(cut, 1 << 16)
            f.seek(cut - step)
            i = f.read(step).rfind(b"\n")
            cut = cut - step + i + 1 if i >= 0 else cut - step
            if i >= 0:
                break
        f.seek(cut)
        tail = f.read()
        try:
            json.loads(tail)
            f.write(b"\n")  # a complete last object that only lacks its newline
        except ValueError:
            f.truncate(cut)
            line = 1 + sum(1 for _ in iter_lines(path))
            print(f"warning: {path}:{line}: dropped a truncated last line "
                  f"({len(tail)} bytes) left by a killed run", file=sys.stderr)


def keep_lines(path: str, keep: dict[str, int]) -> None:
    """Rewrite `path` atomically with only the lines `keep` names ({id: byte offset}, from iter_records),
    sorted by id. Lines are copied as bytes: memory holds the ids, not the file."""
    with open(path, "rb") as src, files.atomic_write(path, "wb") as dst:
        for pid in sorted(keep):
            src.seek(keep[pid])
            dst.write(src.readline(MAX_LINE_BYTES + 1).rstrip(b"\r\n") + b"\n")


# ----------------------------------------------------------------------------------------------
# Training pairs and the batch sampler


def split_validation(ids: Iterable[str], validation_size: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold out `validation_size` papers (by seeded shuffle of sorted ids): (train ids, validation ids)."""
    ids = sorted(ids)
    if validation_size >= len(ids) - 1:
        raise DataError(f"validation_size={validation_size} leaves fewer than 2 of {len(ids)} papers to train on")
    random.Random(seed).shuffle(ids)
    val = set(ids[:validation_size])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def make_pairs(counts: Mapping[str, int], rng: random.Random) -> list[tuple[str, int, int]]:
    """Every unordered pair of different summaries of one paper, as indices into its summaries, in
    random order and orientation: [(paper id, i, j)]. 3 summaries give 3 pairs, 4 give 6."""
    pairs = []
    for pid in sorted(counts):
        for a, b in combinations(range(counts[pid]), 2):
            pairs.append((pid, a, b) if rng.random() < 0.5 else (pid, b, a))
    rng.shuffle(pairs)
    return pairs


def batches_without_duplicates(pair_ids: list[str], batch_size: int) -> list[list[int]]:
    """Cut pairs (given by their paper ids, already shuffled) into batches of indices in which no
    paper appears twice: another pair of the same paper would be a false negative.

    Greedy: each batch takes, in order, the waiting pairs whose paper it lacks; pairs that did not
    fit wait for the next batch, so the order is kept as far as the rule allows. A batch of fewer
    than 2 pairs has no negatives and is dropped (at most a few pairs of one paper at the end).
    """
    queue = deque(range(len(pair_ids)))
    batches = []
    while queue:
        batch, papers, deferred = [], set(), []
        while queue and len(batch) < batch_size:
            i = queue.popleft()
            if pair_ids[i] in papers:
                deferred.append(i)
            else:
                batch.append(i)
                papers.add(pair_ids[i])
        queue.extendleft(reversed(deferred))  # deferred pairs go first into the next batch
        if len(batch) < 2:
            break
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------------------------
# Sentences and halves (the benchmark's abstract-segments task)

# A sentence ends at . ! or ? (optionally followed by a closing quote/bracket), then whitespace, then
# a capital letter, digit, '$' (LaTeX), '\' or an opening quote/bracket -- unless the word before the
# dot is a common abbreviation ("e.g. The" and "et al. Our" do not end sentences).
_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+(?=[A-Z0-9$\\\"'(\[])")
_ABBREVIATIONS = {"e.g", "i.e", "al", "fig", "figs", "eq", "eqs", "ref", "refs", "sec", "vs", "cf", "no",
                  "approx", "resp", "dr", "mr", "ms", "prof", "st", "ca", "viz", "et"}


def split_sentences(text: str) -> list[str]:
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start()].split()
        word = before[-1].lower().rstrip(".") if before else ""
        if word in _ABBREVIATIONS:  # single letters do end sentences: "... of a manifold X. We ..."
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def split_halves(text: str) -> tuple[str, str] | None:
    """Cut at the sentence boundary that makes the halves' lengths (characters) most equal, the earlier
    boundary on a tie; None for a text of fewer than 2 sentences."""
    sents = split_sentences(text)
    if len(sents) < 2:
        return None
    total, best, cut, run = sum(len(s) for s in sents), None, 1, 0
    for i in range(1, len(sents)):
        run += len(sents[i - 1])
        if best is None or abs(2 * run - total) < best:
            best, cut = abs(2 * run - total), i
    return " ".join(sents[:cut]), " ".join(sents[cut:])


def _main(overwrite: bool = False) -> None:
    for name, p in ensure_default_data(settings.resolved().data_dir, overwrite=overwrite).items():
        print(f"{name}: {p}")


if __name__ == "__main__":
    cli.cli(_main, flags={"overwrite": False})
