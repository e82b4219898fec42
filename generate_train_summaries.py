"""Generate the LLM training summaries: `summaries_per_abstract` short summaries of each abstract.

    python generate_train_summaries.py                      # settings.py's server, corpus and output
    python generate_train_summaries.py --dry-run            # print the first request, send nothing
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python generate_train_summaries.py --llm_concurrency=1 --limit=10

Reads `generation_corpus_file`, writes `generated_summaries_file` (the summaries format of
load_data.py: {"id", "summaries": [...], provenance}) plus NAME.failures.jsonl and NAME.settings.json.
Train on them with `python main.py --train_summaries_file=data/llm_summaries.jsonl`.

One request asks for all summaries of a paper as one JSON list, rather than one request per summary:
the abstract (most of the tokens) is read once instead of n times, which on a CPU server is most of
the time, and the model is asked to make the summaries differ, where n independent samples of one
prompt often come back near-identical (load_data drops duplicates, which would cost training pairs).
"""
from __future__ import annotations

import json
import settings
from llm import GenerationError, InvalidOutput, Prompt, clean_text, command_line, generate

SUMMARY_PROMPT = Prompt(
    name="train_summary",
    version=1,
    system="You summarize scientific abstracts. You answer with a JSON object only.",
    user="""Write $n different summaries of the scientific abstract below.

Every summary covers the whole abstract on its own, in one or two sentences: the problem, the \
approach and the main finding, so that a reader understands it without the abstract. The $n \
summaries are alternatives to each other (different wording, different emphasis), not parts of one summary.
Rules:
- Write about the work itself, never about the paper or its authors: no "this paper", "the authors", "we" or "our".
- Avoid specific names (of systems, models, datasets, languages) and numbers: describe them in general words.

Answer with a JSON object of this form and nothing else:
$example

Abstract: $abstract""",
)

MIN_WORDS = 5  # shorter "summaries" are fragments, not statements of the content


def generate_summaries(cfg: dict | None = None, limit: int = 0, dry_run: bool = False) -> dict:
    """Summaries for every paper of cfg's generation_corpus_file into its generated_summaries_file."""
    cfg = settings.resolved() if cfg is None else cfg
    n = cfg["summaries_per_abstract"]
    if n < 2:
        raise GenerationError(f"setting 'summaries_per_abstract' must be >= 2 (a training pair takes two), got {n}")
    values = {"n": n, "example": json.dumps({"summaries": [f"summary {i + 1}" for i in range(n)]})}
    return generate("summaries", SUMMARY_PROMPT, "summaries", lambda obj, paper: parse_summaries(obj, paper, n),
                    cfg["generation_corpus_file"], cfg["generated_summaries_file"], cfg, values=values,
                    limit=limit, dry_run=dry_run)


def parse_summaries(obj: dict, paper: dict, n: int) -> list[str]:
    """The first n distinct summaries of {"summaries": [...]}, or InvalidOutput saying what is wrong."""
    items = obj.get("summaries")
    if not isinstance(items, list):
        raise InvalidOutput(f"no list 'summaries' in the JSON object (keys: {', '.join(map(str, obj)) or 'none'})")
    abstract = clean_text(paper["abstract"]).lower()
    texts: list[str] = []
    for item in items:
        if isinstance(item, dict) and len(item) == 1:  # [{"summary": "..."}, ...], a common variant
            item = next(iter(item.values()))
        text = clean_text(item)
        if len(text.split()) >= MIN_WORDS and text.lower() != abstract and text.lower() not in map(str.lower, texts):
            texts.append(text)
    if len(texts) < n:
        raise InvalidOutput(f"it has {len(texts)} distinct summaries of {MIN_WORDS} or more words, "
                            f"but {n} different ones are needed")
    return texts[:n]


def main(argv: list[str] | None = None) -> None:
    command_line(generate_summaries, argv)


if __name__ == "__main__":
    main()
