"""SemCSE's effect, measured: a search on the validation split, the reproduction table over seeds, and
the data-size curve. One command, resumable:

    python bench/reproduce.py [--phase=all] [--workers=1] [--out=output/reproduce] [--shared=../shared/data]
                              [--mpnet=PATH] [--seeds=3] [--budget_pairs=3200] [--precision=fp32] [--device=auto]

Phases (all = sweep, table, curve, longer, report):
- sweep: every training family (SemCSE = MiniLM's own mean pooling + cosine; the paper's CLS + Euclidean;
  CLS + cosine) is trained on the LLM summaries with seed 0 over a grid of learning rate, temperature and
  batch size, all at one budget of summary pairs (steps = budget_pairs / batch_size, the budget the default
  `python main.py` trains for on 2 CPU cores). Each run's best/ (picked by the validation Title-Abstract
  rank, as always) is scored on the validation papers (data/arxiv_val.jsonl: Title-Abstract,
  Abstract-Segments, kNN). A family's configuration is the one that closes most of the gap to perfect
  over its untrained base on those three tasks, on average. Never a benchmark corpus. -> sweep.json
- table: the rows of the README's table (ROWS), every trained row with seeds 0..seeds-1, scored on the
  three corpora (CORPORA); -> benchmark/<corpus>/<job>.json
- curve: SemCSE at max_train_papers 250/500/1000/2000 (the table's row is all of them) and with 2 of the
  4 summaries a paper (one pair) at equal steps.
- longer: validation only, one seed: does a budget beyond the 3,200 pairs change the picture? (LONGER: the
  paper's setting at the learning rate whose validation was still recovering when its 100 steps ended, five
  times longer, ten validations)
- report: bench/reproduce_report.py writes the tables and figure (docs/reproduction.md, docs/*.png).

A job is one training run (output/reproduce/runs/<job>/) or one untrained model, then its scores; a job
whose scores exist is skipped, a training that was cut resumes. --workers > 1 runs jobs in forked
children side by side (on a GPU; each child gets cpu_count / workers threads, its log in out/logs/).
"""
from __future__ import annotations

import glob
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from semcse import cli  # noqa: E402
import settings  # noqa: E402

FLAGS = {"phase": "all", "workers": 1, "out": "output/reproduce", "shared": os.path.join("..", "shared", "data"),
         "mpnet": "", "seeds": 3, "budget_pairs": 3200}
VALIDATION = "data/arxiv_val.jsonl"
QUERIES = "data/arxiv_queries.jsonl"  # the in-domain corpus' LLM queries; the other corpora have none
RANK_TASKS, ALL_TASKS = ("title_abstract", "abstract_segments", "query"), ("title_abstract", "abstract_segments",
                                                                           "query", "clustering")
# Each family's grid: (learning rate, temperature, batch size); the budget fixes the steps.
FAMILIES = {"semcse": {}, "cls_euclidean": {"pooling": "cls", "metric": "euclidean"},
            "cls_cosine": {"pooling": "cls", "metric": "cosine"}}
GRIDS = {"semcse": list(itertools.product((1e-5, 3e-5, 1e-4), (0.05, 0.1), (32, 64))),
         "cls_euclidean": list(itertools.product((3e-5, 1e-4, 3e-4), (0.05, 0.1), (32,))),
         "cls_cosine": list(itertools.product((3e-5, 1e-4, 3e-4), (0.05, 0.1), (32,)))}
CURVE_PAPERS = (250, 500, 1000, 2000)
# (family, learning rate, temperature, batch size, budget_pairs times): the longer runs, validation only;
# add ("semcse", 3e-5, 0.05, 64, 3) for SemCSE's chosen configuration at three times the budget
LONGER = (("cls_euclidean", 1e-4, 0.05, 32, 5),)


@dataclass(frozen=True)
class Job:
    name: str                 # folder and results name, unique
    corpora: tuple[str, ...]  # names in corpora()
    train: dict = field(default_factory=dict)  # settings of a training run; {} = an untrained model
    model: str = ""           # untrained: a model folder or name, or "lexical" (TF-IDF)
    load: dict = field(default_factory=dict)   # untrained: pooling / metric / normalize for model.load_model


def corpora(flags: dict) -> dict[str, str]:
    """The scored corpora: in-domain (all four tasks), arXiv 2007 (other fields) and PubMed (out of domain),
    and the validation papers (the sweep only)."""
    return {"arxiv_benchmark": "data/arxiv_benchmark.jsonl", "val": VALIDATION,
            "sci_abstracts_dev": os.path.join(flags["shared"], "sci_abstracts_dev.jsonl"),
            "medical_abstracts": os.path.join(flags["shared"], "medical_abstracts.jsonl")}


def folder(corpus: str, flags: dict) -> str:
    """The folder of a corpus' results under out/benchmark/ (the harness names it after the file)."""
    return os.path.splitext(os.path.basename(corpora(flags)[corpus]))[0]


TABLE_CORPORA = ("arxiv_benchmark", "sci_abstracts_dev", "medical_abstracts")
MINILM = settings.packaged_minilm()
BASES = {"semcse": Job("minilm", TABLE_CORPORA + ("val",), model=MINILM),
         "cls_euclidean": Job("minilm_cls_euclidean", TABLE_CORPORA + ("val",), model=MINILM,
                              load={"pooling": "cls", "metric": "euclidean", "normalize": False}),
         "cls_cosine": Job("minilm_cls_cosine", TABLE_CORPORA + ("val",), model=MINILM,
                           load={"pooling": "cls", "metric": "cosine"})}


def budget(batch_size: int, flags: dict) -> dict:
    """Steps for the budget of pairs, with five validations and a tenth of the steps of warm-up."""
    steps = max(flags["budget_pairs"] // batch_size, 2)
    return {"batch_size": batch_size, "max_steps": steps, "eval_every": max(steps // 5, 1),
            "warmup_steps": steps // 10}


def sweep_jobs(flags: dict) -> list[Job]:
    jobs = list(BASES.values())
    for family, grid in GRIDS.items():
        for lr, t, b in grid:
            train = {**FAMILIES[family], "learning_rate": lr, "temperature": t, **budget(b, flags), "seed": 0}
            jobs.append(Job(f"sweep-{family}-lr{lr:g}-t{t:g}-b{b}", ("val",), train))
    return jobs


def chosen(flags: dict) -> dict[str, dict]:
    with open(os.path.join(flags["out"], "sweep.json"), encoding="utf-8") as f:
        return {family: c["train"] for family, c in json.load(f)["chosen"].items()}


def table_jobs(flags: dict) -> list[Job]:
    """The table's rows: untrained models once, trained rows once per seed (the same steps and batch size
    as SemCSE for every other objective or data)."""
    best, shared = chosen(flags), flags["shared"]
    jobs = [BASES["semcse"], BASES["cls_euclidean"], BASES["cls_cosine"],
            Job("tfidf", TABLE_CORPORA, model="lexical")]
    if flags["mpnet"]:
        jobs.append(Job("mpnet", TABLE_CORPORA, model=flags["mpnet"]))
    rows = {"semcse": best["semcse"], "paper_cls_euclidean": best["cls_euclidean"],
            "paper_cls_cosine": best["cls_cosine"],
            "simcse_unsup": {**best["semcse"], "objective": "simcse_unsup"},
            "sarcse": {**best["semcse"], "objective": "sarcse"},
            "scitldr": {**best["semcse"], "train_summaries_file": os.path.join(shared, "scitldr_multi.jsonl")},
            "aclsum": {**best["semcse"], "train_summaries_file": "data/train_summaries.jsonl"},
            "qwen": {**best["semcse"], "train_summaries_file": qwen_summaries(flags)}}
    return jobs + [Job(f"{row}-s{seed}", TABLE_CORPORA, {**train, "seed": seed})
                   for row, train in rows.items() for seed in range(flags["seeds"])]


def curve_jobs(flags: dict) -> list[Job]:
    semcse = chosen(flags)["semcse"]
    variants = [(f"curve-n{n}", {"max_train_papers": n}) for n in CURVE_PAPERS] + [("curve-2sum", {"max_train_summaries": 2})]
    return [Job(f"{name}-s{seed}", TABLE_CORPORA, {**semcse, **extra, "seed": seed})
            for name, extra in variants for seed in range(flags["seeds"])]


def longer_jobs(flags: dict) -> list[Job]:
    """LONGER's runs, seed 0, each best/ scored on the validation papers beside its untrained base."""
    jobs = [BASES[family] for family in dict.fromkeys(f for f, *_ in LONGER)]
    for family, lr, t, b, times in LONGER:
        longer = budget(b, {"budget_pairs": flags["budget_pairs"] * times})
        steps = longer["max_steps"]
        train = {**FAMILIES[family], "learning_rate": lr, "temperature": t, **longer,
                 "eval_every": max(steps // 10, 1), "seed": 0}
        jobs.append(Job(f"longer-{family}-lr{lr:g}-t{t:g}-b{b}-{steps}steps", ("val",), train))
    return jobs


def qwen_summaries(flags: dict) -> str:
    """The summaries Qwen2.5-Coder-1.5B wrote here, as one file: 148 ACLSum papers (prompt v1) and the first
    25 arXiv training papers (prompt v3)."""
    path = os.path.join(flags["out"], "qwen_summaries.jsonl")
    if not os.path.exists(path):
        os.makedirs(flags["out"], exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            for name in ("data/llm_summaries.jsonl", "data/arxiv_summaries.jsonl"):
                with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                    out.writelines(line for line in f if line.strip())
        os.replace(path + ".tmp", path)
    return path


# ----------------------------------------------------------------------------------------------
# One job: train (or load), then score on its corpora


def run_job(job: Job, flags: dict) -> None:
    from semcse import benchmark as H
    from load_data import load_corpus
    from semcse.model import for_scoring, load_model
    from train_embedding_model import train_embedding_model

    cfg = job_config(flags)
    if job.train:
        best = train_embedding_model(cfg.replace(save_name=job.name, output_dir=os.path.join(flags["out"], "runs"),
                                                 **job.train), resume=True)
        model, tok = load_model(best, cfg.device, offline=True)
    elif job.model != "lexical":
        model, tok = load_model(job.model, cfg.device, offline=True, **job.load)
    for name in job.corpora:
        path = corpora(flags)[name]
        if job.model == "lexical":
            emb = H.TfidfEmbedder(load_corpus(path), cfg, name=job.name)
        else:
            emb = H.ModelEmbedder(job.name, for_scoring(model, cfg.precision), tok, cfg, role="model",
                                  path=job.model or job.name)
        H.run_benchmark([emb], cfg, path, QUERIES, overwrite=False)  # a corpus without queries: Query skipped
    if job.train:  # the optimizer state is only for resuming, and the scores are in: keep best/ only
        shutil.rmtree(os.path.join(flags["out"], "runs", job.name, "last"), ignore_errors=True)


def job_config(flags: dict) -> settings.Config:
    """The settings every job shares: the repository's defaults, validation on the training pool's held-out
    papers, no embedding cache (each model is scored once), results under --out."""
    return settings.resolved(validation_corpus_file=VALIDATION, embedding_cache_dir="", output_dir=flags["out"],
                             perf_reference="none", patience=0)


def scored(flags: dict) -> dict[tuple[str, str], set[str]]:
    """{(results folder, model name): the tasks it has, scored or skipped with a reason} of every results file
    under out/benchmark/ (files are found by the model named in them, whatever the harness names the file)."""
    out = {}
    for path in glob.glob(os.path.join(flags["out"], "benchmark", "*", "*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            out[os.path.basename(os.path.dirname(path)), r["model"]] = set(r.get("tasks", {})) | set(r.get("skipped", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # damaged: the job runs again and rewrites it
    return out


def done(job: Job, flags: dict, have: dict[tuple[str, str], set[str]]) -> bool:
    """Whether every corpus of the job has its results with every task (scored, or skipped with a reason)."""
    return all(have.get((folder(name, flags), job.name), set()) >= set(ALL_TASKS) for name in job.corpora)


def run_jobs(jobs: list[Job], flags: dict) -> None:
    """Run the jobs not done yet: in this process (--workers=1) or in up to `workers` forked children at
    once, each with its log in out/logs/ (this process never touches CUDA, so each child starts its own)."""
    have = scored(flags)
    todo = [j for j in jobs if not done(j, flags, have)]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs done already; {len(todo)} to run", flush=True)
    if flags["workers"] <= 1:
        for job in todo:
            run_job(job, flags)
        return
    logs = os.path.join(flags["out"], "logs")
    os.makedirs(logs, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // flags["workers"])
    running: list[tuple[Job, multiprocessing.Process]] = []
    failed = []
    while todo or running:
        while todo and len(running) < flags["workers"]:
            job = todo.pop(0)
            proc = multiprocessing.get_context("fork").Process(
                target=_child, args=(job, flags, os.path.join(logs, job.name + ".log"), threads))
            proc.start()
            running.append((job, proc))
        time.sleep(0.2)
        for job, proc in [r for r in running if r[1].exitcode is not None]:
            running.remove((job, proc))
            print(f"{job.name}: {'done' if proc.exitcode == 0 else f'FAILED (exit {proc.exitcode})'}", flush=True)
            if proc.exitcode:
                failed.append(job.name)
    if failed:
        raise SystemExit(f"error: {len(failed)} jobs failed (logs in {logs}): {', '.join(failed)}")


def _child(job: Job, flags: dict, log: str, threads: int) -> None:
    """One job in a forked child: its output to its log, `threads` CPU threads."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(threads)
    run_job(job, flags)
    sys.stdout.flush()
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------
# The sweep's choice


def choose(flags: dict) -> dict:
    """Each family's configuration with the highest mean gap closed over its base on the validation papers:
    per task (base - r) / (base - 1) for a mean rank, (a - base) / (1 - base) for kNN agreement."""
    from bench.reproduce_report import load_scores

    scores = load_scores(flags["out"], folder("val", flags))
    rows, pick = [], {}
    for family, base in BASES.items():
        b = scores[base.name]
        for lr, t, bs in GRIDS[family]:
            name = f"sweep-{family}-lr{lr:g}-t{t:g}-b{bs}"
            s = scores[name]
            gaps = {task: (b[task] - s[task]) / (b[task] - 1) for task in ("title_abstract", "abstract_segments")}
            gaps["clustering"] = (s["clustering"] - b["clustering"]) / (1 - b["clustering"])
            train = {**FAMILIES[family], "learning_rate": lr, "temperature": t, **budget(bs, flags)}
            rows.append({"family": family, "job": name, "train": train, "val": s, "gap_closed": gaps,
                         "score": sum(gaps.values()) / len(gaps)})
            if family not in pick or rows[-1]["score"] > pick[family]["score"]:
                pick[family] = rows[-1]
    result = {"chosen": pick, "runs": rows, "bases": {f: scores[j.name] for f, j in BASES.items()},
              "budget_pairs": flags["budget_pairs"]}
    with open(os.path.join(flags["out"], "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    for family, p in pick.items():
        print(f"sweep: {family}: {p['job']} (mean gap closed {p['score']:+.3f})")
    return result


def main(phase: str = "all", **flags) -> None:
    flags = {**FLAGS, **flags, "phase": phase}
    flags["out"] = os.path.abspath(flags["out"])
    flags["shared"] = os.path.abspath(flags["shared"])
    from load_data import ensure_default_data

    ensure_default_data(settings.resolved().data_dir)  # ACLSum's summaries for the aclsum row
    phases = ("sweep", "table", "curve", "longer", "report") if phase == "all" else (phase,)
    started = time.time()
    for p in phases:
        if p == "sweep":
            run_jobs(sweep_jobs(flags), flags)
            choose(flags)
        elif p in ("table", "curve", "longer"):
            run_jobs({"table": table_jobs, "curve": curve_jobs, "longer": longer_jobs}[p](flags), flags)
        elif p == "report":
            from bench.reproduce_report import report
            report(flags, {corpus: folder(corpus, flags) for corpus in corpora(flags)})
        else:
            raise settings.SettingsError(f"option '--phase' must be all, sweep, table, curve, longer or report, "
                                         f"got {p!r}")
        print(f"phase {p} finished at {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    cli.cli(main, flags=FLAGS)
