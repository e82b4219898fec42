"""The report of bench/reproduce.py: the sweep, the reproduction table (mean and standard deviation over
seeds), the claims checked against two standard deviations, and the data-size curve.

    python bench/reproduce.py --phase=report [--out=output/reproduce]

Writes docs/reproduction.md and docs/data_size_curve.png from the results under --out (nothing is
recomputed), and prints the markdown.
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("title_abstract", "abstract_segments", "query", "clustering")
COLUMNS = {"title_abstract": "Title-Abstract", "abstract_segments": "Abstract-Segments", "query": "Query",
           "clustering": "kNN@10"}
CORPUS_TITLES = {"arxiv_benchmark": "In domain: `data/arxiv_benchmark.jsonl` (1,530 arXiv papers of 2025-26, "
                                    "17 categories, LLM queries)",
                 "sci_abstracts_dev": "Other fields: `../shared/data/sci_abstracts_dev.jsonl` (1,054 arXiv papers "
                                      "of 2007, 9 archives; no queries)",
                 "medical_abstracts": "Out of domain: `../shared/data/medical_abstracts.jsonl` (2,807 PubMed "
                                      "abstracts, 5 conditions; no queries)"}
ROWS = (("minilm", "all-MiniLM-L6-v2 as shipped", "mean, cosine"),
        ("mpnet", "all-mpnet-base-v2 as shipped", "mean, cosine"),
        ("tfidf", "TF-IDF", "lexical, cosine"),
        ("semcse", "**SemCSE** (MiniLM + LLM summary pairs)", "mean, cosine"),
        ("minilm_cls_euclidean", "MiniLM's CLS token, untrained", "CLS, Euclidean, raw"),
        ("paper_cls_euclidean", "**SemCSE, the paper's setting**", "CLS, Euclidean, raw"),
        ("minilm_cls_cosine", "MiniLM's CLS token, untrained", "CLS, cosine"),
        ("paper_cls_cosine", "SemCSE_cosine", "CLS, cosine"),
        ("simcse_unsup", "SimCSE-unsup, same summaries", "mean, cosine"),
        ("sarcse", "SARCSE, same summaries", "mean, cosine"),
        ("scitldr", "SciTLDR human TLDR pairs", "mean, cosine"),
        ("aclsum", "ACLSum human aspect pairs", "mean, cosine"),
        ("qwen", "Qwen2.5-Coder-1.5B summaries (ours)", "mean, cosine"))
FULL = 4944 - 50  # training papers of the LLM summaries: validation_size (50) are held out
PAPERS = {"semcse": "data/arxiv_llm_summaries.jsonl", "scitldr": "scitldr_multi.jsonl",
          "aclsum": "data/train_summaries.jsonl", "qwen": "qwen_summaries.jsonl"}


def load_scores(out: str, corpus: str) -> dict[str, dict[str, float]]:
    """{job: {task: mean rank, or kNN agreement for clustering}} of the results files of one corpus."""
    scores = {}
    for path in glob.glob(os.path.join(out, "benchmark", corpus, "*.json")):
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        tasks = r.get("tasks", {})
        scores[r["model"]] = {t: tasks[t]["knn_agreement" if t == "clustering" else "mean_rank"]
                              for t in TASKS if t in tasks}
    return scores


def by_row(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """{row: {task: [value of each seed]}}: jobs "<row>-s<seed>" grouped, untrained jobs as one value."""
    rows: dict[str, dict[str, list[float]]] = {}
    for job, s in sorted(scores.items()):
        row = re.sub(r"-s\d+$", "", job)
        for task, v in s.items():
            rows.setdefault(row, {}).setdefault(task, []).append(v)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def better(rows: dict, a: str, b: str, task: str) -> tuple[bool, float, float]:
    """(a beats b beyond two standard deviations of the seeds, difference of means, that bound)."""
    (ma, sa), (mb, sb) = mean_std(rows[a][task]), mean_std(rows[b][task])
    diff = (mb - ma) if task != "clustering" else (ma - mb)  # > 0: a is better
    bound = 2 * max(sa, sb)
    return diff > bound, diff, bound


def report(flags: dict, folders: dict[str, str]) -> str:
    """docs/reproduction.md and the curve figure from the results under flags["out"]; `folders`: each corpus'
    results folder under out/benchmark/ (bench/reproduce.py names them; passed in, so this module imports
    nothing of reproduce.py, which imports it)."""
    out = flags["out"]
    lines = [f"# SemCSE reproduced: measured tables\n\nWritten by `python bench/reproduce.py` from `{_rel(out)}`; "
             "every trained row is the mean ± standard deviation over its seeds (n in the last column).\n"]
    lines += [provenance(out)] + sweep_section(out)
    tables = {}
    for corpus, title in CORPUS_TITLES.items():
        rows = by_row(load_scores(out, folders[corpus]))
        if rows:
            tables[corpus] = rows
            lines += [f"## {title}\n"] + table(rows, flags) + [""]
    lines += claims(tables) + longer_section(out, folders["val"])
    figure = curve_figure(tables, os.path.join(ROOT, "docs", "data_size_curve.png"))
    if figure:
        lines += ["## Data-size curve\n", f"![SemCSE's four task scores against the number of training papers]"
                  f"(data_size_curve.png)\n", curve_table(tables)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "docs", "reproduction.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return text


def provenance(out: str) -> str:
    """Where and with what the scores were made, read from a results file."""
    paths = sorted(glob.glob(os.path.join(out, "benchmark", "*", "*.json")))
    if not paths:
        return ""
    with open(paths[0], encoding="utf-8") as f:
        r = json.load(f)
    v, cfg = r.get("versions", {}), r.get("settings", {})
    return (f"Scored on device `{cfg.get('device')}` at precision `{cfg.get('precision')}` with "
            + ", ".join(f"{k} {x}" for k, x in v.items()) + ". A seed sets the 50 papers held out of the "
            "training summaries, the batch order and the dropout masks; each run keeps the checkpoint with the "
            "best validation Title-Abstract rank (`best/`), as `python main.py` does.\n")


def sweep_section(out: str) -> list[str]:
    path = os.path.join(out, "sweep.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        sweep = json.load(f)
    lines = [f"## The search (validation split only: `data/arxiv_val.jsonl`, 340 held-out training-pool papers; "
             f"seed 0; {sweep['budget_pairs']} summary pairs a run)\n",
             "Gap closed per task: (base − r) / (base − 1) for a mean rank, (a − base) / (1 − base) for kNN "
             "agreement, against the family's untrained base; the run with the highest mean is chosen.\n",
             "| family | lr | temperature | batch | steps | val Title-Abstract | val Segments | val kNN@10 | "
             "mean gap closed |", "|---|---|---|---|---|---|---|---|---|"]
    for family, base in sweep["bases"].items():
        lines.append(f"| {family}: untrained base | – | – | – | 0 | {base['title_abstract']:.3f} | "
                     f"{base['abstract_segments']:.3f} | {base['clustering']:.3f} | 0 |")
    for r in sweep["runs"]:
        t, v = r["train"], r["val"]
        mark = " **chosen**" if sweep["chosen"][r["family"]]["job"] == r["job"] else ""
        lines.append(f"| {r['family']} | {t['learning_rate']:g} | {t['temperature']:g} | {t['batch_size']} | "
                     f"{t['max_steps']} | {v['title_abstract']:.3f} | {v['abstract_segments']:.3f} | "
                     f"{v['clustering']:.3f} | {r['score']:+.3f}{mark} |")
    return lines + [""]


def longer_section(out: str, val_folder: str) -> list[str]:
    """The longer runs (bench/reproduce.py's phase "longer"): the validation Title-Abstract rank at each of
    their validations (from log.jsonl) and their best/ on the validation papers beside the family's base."""
    runs = sorted(glob.glob(os.path.join(out, "runs", "longer-*", "log.jsonl")))
    path = os.path.join(out, "sweep.json")
    if not runs or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        bases = json.load(f)["bases"]
    scores = load_scores(out, val_folder)
    lines = ["## Longer training (validation only: `data/arxiv_val.jsonl`; seed 0)\n",
             "Does a budget beyond the search's change the picture? Validation Title-Abstract rank at each "
             "validation (step 0 = untrained), and `best/` on the validation papers against the untrained base.\n",
             "| run | pairs | val Title-Abstract, step: rank | best/: Title-Abstract / Segments / kNN@10 | "
             "base: Title-Abstract / Segments / kNN@10 |", "|---|---|---|---|---|"]
    for log in runs:
        job = os.path.basename(os.path.dirname(log))
        family = next((f for f in bases if job.startswith(f"longer-{f}-")), None)
        with open(log, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(os.path.dirname(log), "settings.json"), encoding="utf-8") as f:
            run = json.load(f)  # the run's resolved settings, written beside its log
        curve = ", ".join(f"{e['step']}: {e['val_title_abstract']:.2f}"
                          for e in events if "val_title_abstract" in e)
        lines.append(f"| {job} | {run['batch_size'] * run['max_steps']:,} | {curve} | {_triple(scores.get(job))} | "
                     f"{_triple(bases.get(family))} |")
    return lines + [""]


def _triple(s: dict | None) -> str:
    if not s:
        return "not scored yet"
    return f"{s['title_abstract']:.3f} / {s['abstract_segments']:.3f} / {s['clustering']:.3f}"


def table(rows: dict, flags: dict) -> list[str]:
    from semcse.benchmark_tasks import perf_scores

    means = {r: {"role": "base" if r == "minilm" else "", "tasks": {
        t: {"knn_agreement" if t == "clustering" else "mean_rank": mean_std(v)[0]} for t, v in rows[r].items()}}
        for r in rows}
    perf = perf_scores(means, "minilm")
    tasks = [t for t in TASKS if any(t in r for r in rows.values())]
    lines = ["| Model | Scored as | " + " | ".join(COLUMNS[t] for t in tasks) + " | Perf. | n |",
             "|---" * (len(tasks) + 4) + "|"]
    for key, label, scored in ROWS:
        if key not in rows:
            continue
        cells = []
        for t in tasks:
            if t not in rows[key]:  # cut before this task was scored
                cells.append("not scored")
                continue
            m, s = mean_std(rows[key][t])
            digits = 3 if t == "clustering" else 2
            cells.append(f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(rows[key][t]) > 1 else ""))
        p = perf[key][0] if set(tasks) <= set(rows[key]) else None  # a Perf. over fewer tasks would mislead
        n = len(next(iter(rows[key].values())))
        lines.append(f"| {label}{papers(key, flags)} | {scored} | " + " | ".join(cells) +
                     f" | {'–' if p is None else f'{p:+.3f}'} | {n} |")
    return lines


def papers(row: str, flags: dict) -> str:
    """ ' (N training papers)' for the rows trained on other data."""
    if row not in PAPERS:
        return ""
    from load_data import load_summaries

    name = PAPERS[row]
    path = name if name.startswith("data/") else os.path.join(flags["shared"] if row == "scitldr" else flags["out"], name)
    try:
        n = len(load_summaries(os.path.join(ROOT, path) if name.startswith("data/") else path))
    except Exception:  # noqa: BLE001 -- the file is not on this machine: no count
        return ""
    import settings

    return f" ({n - settings.resolved().validation_size:,} training papers)"  # validation_size are held out


def claims(tables: dict) -> list[str]:
    """The issue's claims, each with its numbers: a beats b when the difference of the means exceeds
    two standard deviations of the seeds (the larger of the two rows')."""
    checks = [("arxiv_benchmark", "semcse", "minilm", 3), ("sci_abstracts_dev", "semcse", "minilm", 2),
              ("arxiv_benchmark", "paper_cls_euclidean", "minilm_cls_euclidean", 4),
              ("arxiv_benchmark", "semcse", "simcse_unsup", 3)]
    lines = ["## Claims, checked (a beats b: difference of means > 2 standard deviations of the seeds)\n",
             "| corpus | a | b | tasks a beats b | needed | per task: difference (bound) | holds |", "|---" * 7 + "|"]
    for corpus, a, b, needed in checks:
        rows = tables.get(corpus, {})
        if a not in rows or b not in rows:
            continue
        tasks = [t for t in TASKS if t in rows[a] and t in rows[b]]
        results = {t: better(rows, a, b, t) for t in tasks}
        wins = sum(r[0] for r in results.values())
        detail = "; ".join(f"{COLUMNS[t]} {d:+.3f} ({bound:.3f})" for t, (_, d, bound) in results.items())
        lines.append(f"| {corpus} | {a} | {b} | {wins} of {len(tasks)} | {needed} | {detail} | "
                     f"{'yes' if wins >= needed else '**no**'} |")
    return lines + ["", "Differences are signed so that > 0 means a is better (lower rank, higher kNN agreement).", ""]


def curve_points(rows: dict) -> list[tuple[int, str]]:
    points = sorted((int(m.group(1)), r) for r in rows if (m := re.fullmatch(r"curve-n(\d+)", r)))
    return points + [(FULL, "semcse")] if "semcse" in rows else points


def curve_figure(tables: dict, path: str) -> bool:
    """One row per corpus, one panel per task: SemCSE (mean ± std over seeds) against the training papers,
    MiniLM as shipped as a dotted line, and 2 summaries a paper (all papers, equal steps) as a cross."""
    corpora = [c for c in CORPUS_TITLES if len(curve_points(tables.get(c, {}))) >= 2]
    if not corpora:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(corpora), 4, figsize=(16, 3.2 * len(corpora)), squeeze=False)
    for row, corpus in zip(axes, corpora):
        rs = tables[corpus]
        for ax, task in zip(row, TASKS):
            pts = [(n, r) for n, r in curve_points(rs) if task in rs[r]]
            if not pts:
                ax.axis("off")
                continue
            ms = np.array([mean_std(rs[r][task]) for _, r in pts])
            ax.errorbar([n for n, _ in pts], ms[:, 0], yerr=ms[:, 1], fmt="-o", capsize=3, label="SemCSE, 4 summaries")
            if "curve-2sum" in rs and task in rs["curve-2sum"]:
                m, s = mean_std(rs["curve-2sum"][task])
                ax.errorbar([FULL], [m], yerr=[s], fmt="x", color="C3", capsize=3, ms=9, label="SemCSE, 2 summaries")
            if "minilm" in rs and task in rs["minilm"]:
                ax.axhline(rs["minilm"][task][0], color="grey", ls=":", label="MiniLM as shipped")
            ax.set_xscale("log")
            ax.set_xticks([n for n, _ in pts], [f"{n:,}" for n, _ in pts], fontsize=7)
            ax.minorticks_off()
            ax.set_title(f"{corpus}: {COLUMNS[task]}" + (" (higher is better)" if task == "clustering" else
                                                          " mean rank"), fontsize=9)
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("training papers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def curve_table(tables: dict) -> str:
    lines = ["| corpus | training papers | summaries a paper | " + " | ".join(COLUMNS[t] for t in TASKS) + " |",
             "|---" * 7 + "|"]
    for corpus, rows in tables.items():
        pts = [(n, r, 4) for n, r in curve_points(rows)] + ([(FULL, "curve-2sum", 2)] if "curve-2sum" in rows else [])
        for n, r, k in pts:
            cells = [("{:.3f} ± {:.3f}" if t == "clustering" else "{:.2f} ± {:.2f}").format(*mean_std(rows[r][t]))
                     if t in rows[r] else "–" for t in TASKS]
            lines.append(f"| {corpus} | {n:,} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)
