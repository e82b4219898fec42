"""The benchmark's results files and report: a file per model (named uniquely, read back and checked
like any input), the markdown table and the t-SNE map. Scoring is in benchmark.py, the tasks in
benchmark_tasks.py."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from semcse import files
from semcse.benchmark_tasks import COLUMNS, TASKS
from semcse.model import short_name

RANK_TASKS = ("title_abstract", "abstract_segments", "query")
MIN_MAP_PAPERS = 2  # t-SNE needs two points (its perplexity is below the number of points)


@dataclass
class Skipped:
    """A model of the run that is not scored (a default that is not on this machine, or cannot be loaded):
    the table names it and says why."""
    name: str
    reason: str
    role: str = ""


# ----------------------------------------------------------------------------------------------
# Names and files: one per model, never shared


def display_names(paths: list[str]) -> list[str]:
    """Each model's name for the table: short_name (a folder's last two parts), with more of its folders
    where two would read alike (A/run/best and B/run/best): one model's numbers never show under another's
    name."""
    names = [short_name(p) for p in paths]
    for parts in range(3, 64):
        alike = {n for n in names if names.count(n) > 1}
        if not alike:
            break
        names = [_last_parts(p, parts) if n in alike else n for p, n in zip(paths, names)]
    return names


def model_identity(path: str) -> str:
    """What tells two models apart: the resolved folder (a link or a relative path is the same folder), or
    the name of a model that is not a local folder."""
    return os.path.realpath(path) if os.path.exists(path) else path


def results_path(out_dir: str, name: str, model_path: str) -> str:
    """out_dir/<name>-<hash of the model's folder>.json (no hash for a model without a folder, TF-IDF): a
    file per model, so two models whose names read alike never share one, nor re-score each other's."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    if model_path:
        stem += "-" + hashlib.sha256(model_identity(model_path).encode()).hexdigest()[:8]
    return os.path.join(out_dir, stem + ".json")


def _last_parts(path: str, n: int) -> str:
    if not os.path.exists(path):
        return path
    return "/".join(os.path.realpath(path).split(os.sep)[-n:]).lstrip("/") or path


def read_results(path: str, n_papers: int) -> dict:
    """A results file of an earlier run, or {} (none, or damaged: named, and scored again). Each task in it
    is checked like any input (task_problem); a task that fails is named and dropped, to be scored again."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        print(f"{path}: damaged ({type(e).__name__}); scoring again")
        return {}
    if not isinstance(result, dict):
        print(f"{path}: not a JSON object ({type(result).__name__}); scoring again")
        return {}
    if not isinstance(result.get("tasks"), dict):
        result["tasks"] = {}
    for task, scored in list(result["tasks"].items()):
        problem = task_problem(task, scored, n_papers)
        if problem:
            print(f"{path}: its {task} result is not usable ({problem}); scoring it again")
            del result["tasks"][task]
    return result


def task_problem(task: str, t: Any, n_papers: int) -> str | None:
    """Why a task's stored result cannot be shown (a missing field, a wrong type, an impossible value such
    as a mean rank below 1), or None."""
    if not isinstance(t, dict):
        return "not a JSON object"

    def number(field: str, low: float, high: float, kind: tuple = (int, float)) -> str | None:
        v = t.get(field)
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
            return f"'{field}' is missing or not {'an integer' if kind == (int,) else 'a number'}"
        return None if low <= v <= high else f"'{field}' is {v}, not between {low:g} and {high:g}"

    if task in RANK_TASKS:
        problem = number("n_candidates", 2, n_papers, (int,))
        if problem:
            return problem
        c = t["n_candidates"]
        checks = [number("n", 1, math.inf, (int,)), number("mean_rank", 1, c), number("median_rank", 1, c),
                  number("mrr", 1 / c, 1), number("mrr_at_10", 0, 1), number("accuracy_at_1", 0, 1)]
    elif task == "clustering":
        checks = [number(k, 0, 1) for k in ("knn_agreement", "knn_agreement_macro", "v_measure", "chance")]
        checks += [number("k", 1, n_papers, (int,)), number("n_labelled", 2, n_papers, (int,)),
                   number("n_labels", 2, n_papers, (int,))]
    elif task == "sts_b":
        checks = [number("spearman", -100, 100), number("n", 1, math.inf, (int,))]
    else:
        return "not a task of this benchmark"
    return next((c for c in checks if c), None)


# ----------------------------------------------------------------------------------------------
# Table and map


def describe_scoring(s: dict) -> str:
    """'mean, cosine, normalized, 256 tokens' (+ ' (forced)' when --metric overrode the model's own)."""
    parts = [s["pooling"], s["similarity"] + (" (forced)" if s.get("forced") else ""),
             "normalized" if s["normalized"] else "not normalized"]
    return ", ".join(parts + ([f"{s['max_length']} tokens"] if s.get("max_length") else []))


def results_table(results: dict[str, dict], cfg: Any, data: dict, missing: list[Skipped] = ()) -> str:
    """Markdown like the paper's table (mean ranks, kNN agreement, Perf.) with how each model was
    scored, then the details, the tasks skipped and the models not scored, each with why."""
    def cell(r: dict, task: str, key: str, fmt: str) -> str:
        t = r["tasks"].get(task)
        return format(t[key], fmt) if t else "–"

    counts = {t: v for t, v in next((r["tasks"] for r in results.values() if r["tasks"]), {}).items() if t in TASKS}
    has_sts = any("sts_b" in r["tasks"] for r in results.values())
    head = ", ".join(f"{COLUMNS[t]} {v['n']} of {v['n_candidates']}" if "n" in v
                     else f"{COLUMNS[t]} {v['n_labelled']} papers, {v['n_labels']} labels, k={v['k']}"
                     for t, v in counts.items())
    metric = (f"similarity forced to {cfg.metric} for every model (an ablation)" if cfg.metric != "auto"
              else "each model scored with its own pooling and similarity")
    ref = next((m for m, r in results.items() if cfg.perf_reference in (m, r.get("role"))), None)
    perf = (f"Perf. = 0 at {ref}, 1 at the best model of this run, linear, averaged over the tasks; not comparable "
            f"across corpora or with the paper" if ref else
            f"Perf. left empty: the reference model (perf_reference={cfg.perf_reference}) is not in this run")
    lines = [f"Corpus {data['corpus_file']} ({data['n_papers']} papers; {head}); {metric}. "
             f"Mean rank of the true partner (1 = perfect, lower is better); Clustering = kNN label agreement. "
             f"{perf}.", "",
             "| Model | Scored as | Params | " + " | ".join(COLUMNS[t] for t in TASKS) + " | Perf. |"
             + (" STS-B |" if has_sts else ""), "|---" * (9 if has_sts else 8) + "|"]
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.1f}M" if r.get("params") else "–"
        cells = [cell(r, t, "mean_rank", ".2f") for t in TASKS[:3]] + [cell(r, "clustering", "knn_agreement", ".3f")]
        p = "–" if r.get("perf") is None else f"{r['perf']:.3f}"
        sts = f" {cell(r, 'sts_b', 'spearman', '.2f')} |" if has_sts else ""
        lines.append(f"| {name} | {describe_scoring(r['scoring'])} | {params} | " + " | ".join(cells) + f" | {p} |" + sts)
    lines += ["", "Details: median rank / MRR per rank task; v-measure of k-means; seconds for all tasks.", "",
              "| Model | " + " | ".join(f"{COLUMNS[t]} med / MRR" for t in TASKS[:3]) + " | v-measure | seconds |",
              "|---" * 6 + "|"]
    for name, r in results.items():
        cells = [f"{cell(r, t, 'median_rank', '.1f')} / {cell(r, t, 'mrr', '.3f')}" for t in TASKS[:3]]
        secs = sum(t.get("seconds", 0) for t in r["tasks"].values())
        cells.append(cell(r, "clustering", "v_measure", ".3f"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.1f} |")
    skipped = {t: why for r in results.values() for t, why in r.get("skipped", {}).items()}
    lines += [f"\nSkipped {COLUMNS[t]}: {why}" for t, why in skipped.items()]
    lines += [f"\nNot scored: {m.name}: {m.reason}" for m in missing]
    return "\n".join(lines)


def map_problem(labels: list) -> str | None:
    """Why no map can be drawn of papers with these labels (None = unlabelled), or None."""
    n = sum(y is not None for y in labels)
    if n < MIN_MAP_PAPERS:
        return f"{n} paper{'' if n == 1 else 's'} of the corpus ha{'s' if n == 1 else 've'} a label; a map needs " \
               f"at least {MIN_MAP_PAPERS}"
    return None


def draw_map(embeddings: dict[str, tuple[np.ndarray, str]], labels: list, path: str, seed: int) -> None:
    """t-SNE of each model's paper embeddings ([n, dim], with its metric), side by side, coloured by label;
    with too few labelled papers, a note instead (the run's results are written before)."""
    problem = map_problem(labels)
    if problem:
        print(f"map of the embedding space not drawn: {problem}")
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    keep = [i for i, y in enumerate(labels) if y is not None]
    names = sorted(set(labels[i] for i in keep))
    colour = {y: plt.cm.tab10(i % 10) if len(names) <= 10 else plt.cm.tab20(i % 20) for i, y in enumerate(names)}
    fig, axes = plt.subplots(1, len(embeddings), figsize=(6 * len(embeddings), 6), squeeze=False)
    for ax, (name, (x, metric)) in zip(axes[0], embeddings.items()):
        xy = TSNE(2, perplexity=min(30.0, (len(keep) - 1) / 3), init="pca", random_state=seed,
                  metric="cosine" if metric == "cosine" else "euclidean").fit_transform(x[keep])
        for y in names:
            sel = [j for j, i in enumerate(keep) if labels[i] == y]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour[y], label=y)
        ax.set(title=name, xticks=[], yticks=[])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    with files.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    print(f"map of the embedding space: {path}")
