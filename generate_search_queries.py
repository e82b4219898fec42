"""Generate the benchmark's search queries: one realistic literature-search query per paper.

    python generate_search_queries.py                       # settings.py's server, corpus and output
    python generate_search_queries.py --dry-run             # print the first request, send nothing
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python generate_search_queries.py --llm_concurrency=1

Reads `query_corpus_file`, writes `queries_file` ({"id", "query", provenance}, one line per paper,
read by semantic_benchmark.py's query task) plus NAME.failures.jsonl and NAME.settings.json.
The paper's queries were written by Mistral-Small 3.1 (prompt not published); this is our prompt.
"""
from __future__ import annotations

import re

import settings
from semcse.llm import InvalidOutput, Prompt, clean_text, command_line, generate
from settings import Config


def generate_queries(cfg: Config | None = None, limit: int = 0, dry_run: bool = False) -> dict:
    """One search query for every paper of cfg's query_corpus_file into its queries_file."""
    cfg = settings.resolved() if cfg is None else cfg
    return generate("queries", QUERY_PROMPT, "query", parse_query, cfg.query_corpus_file, cfg.queries_file,
                    cfg, limit=limit, dry_run=dry_run, out_setting="queries_file")


QUERY_PROMPT = Prompt(
    name="search_query",
    version=1,
    system="You help researchers search the scientific literature. You answer with a JSON object only.",
    user="""Here is a scientific paper. Write one realistic search query that a researcher who needs \
exactly this paper would type into a literature search engine.

The query is a short phrase or question of 4 to 15 words about what the paper does or finds. \
Do not copy the title, and do not use names that the paper gives to its own system or dataset.

Answer with a JSON object of this form and nothing else:
{"query": "the search query"}

Title: $title
Abstract: $abstract""",
)

MIN_WORDS, MAX_WORDS = 2, 30  # wider than the prompt's 4-15: reject only what is not a query at all


def parse_query(obj: dict, paper: dict) -> str:
    """The query of {"query": "..."}, or InvalidOutput if missing, too short or long, or if it is the title,
    contains the whole title, or is a run of 4 or more of the title's words."""
    query = clean_text(obj.get("query"))
    if not query:
        raise InvalidOutput(f"no string 'query' in the JSON object (keys: {', '.join(map(str, obj)) or 'none'})")
    words = len(query.split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        raise InvalidOutput(f"query has {words} words, expected {MIN_WORDS} to {MAX_WORDS}")
    title, q = f" {_letters(paper['title'])} ", f" {_letters(query)} "
    if q == title or (len(title.split()) >= 3 and title in q) or (len(q.split()) >= 4 and q in title):
        raise InvalidOutput("the query copies the title (or a part of it); use other words")
    return query


def _letters(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def main(argv: list[str] | None = None) -> None:
    command_line(generate_queries, argv)


if __name__ == "__main__":
    main()
