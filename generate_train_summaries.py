"""Generate the LLM training summaries: `summaries_per_abstract` short summaries of each abstract.

    python generate_train_summaries.py                      # settings.py's server, corpus and output
    python generate_train_summaries.py --dry-run            # print the first request, send nothing
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python generate_train_summaries.py --llm_concurrency=1 --limit=10
    python generate_train_summaries.py --quality=data/llm_summaries.jsonl   # quality figures (markdown)

Reads `generation_corpus_file`, writes `generated_summaries_file` (the summaries format of
load_data.py: {"id", "summaries": [...], provenance}) plus NAME.failures.jsonl and NAME.settings.json.
Train on them with `python main.py --train_summaries_file=data/llm_summaries.jsonl`.

One request asks for n + EXTRA_CANDIDATES summaries of a paper as one JSON list and keeps the first n
that pass the checks, rather than one request per summary:
the abstract (most of the tokens) is read once instead of n times, which on a CPU server is most of
the time, and the model is asked to make the summaries differ, where n independent samples of one
prompt often come back near-identical.

Every summary is checked (summary_problem): MIN_WORDS..MAX_WORDS words in at most two sentences,
nothing about "this paper / we / the authors", no digits, not the title, no run of COPY_RUN words
from the abstract, not a near-duplicate of a sibling. If fewer than n pass, the model is told which
failed and why and asked again (llm_retries times). Training needs pairs, so when no attempt gives n
good summaries, the paper is still kept with the best attempt's good ones if there are at least
MIN_KEEP; its line says "partial": true and lists the "dropped" summaries with their reasons.
Papers with fewer go to the failures file.
"""
from __future__ import annotations

import json
import re
import sys

import settings
from load_data import iter_corpus, iter_summaries, split_sentences
from semcse.llm import InvalidOutput, Prompt, clean_text, command_line, generate
from settings import Config

MIN_WORDS, MAX_WORDS = 8, 60  # one or two sentences: shorter is a fragment, longer a second abstract
MAX_SENTENCES = 2
COPY_RUN = 8                   # this many consecutive words of the abstract: a copied clause, not a summary
MAX_SIBLING_JACCARD = 0.7      # word-set overlap with an earlier summary above this: the same summary again
MIN_KEEP = 2                   # good summaries a paper needs to be kept at all (one training pair)
BANNED = re.compile(r"\b(?:(?:this|the present|our|the proposed) (?:paper|study|work|article|research|thesis|"
                    r"letter|manuscript|report)|the authors?|the researchers|we|our|ours|ourselves)\b", re.I)

EXTRA_CANDIDATES = 2           # ask for n + 2 and keep the first n that pass: a retry costs a whole answer
TARGET_WORDS = (10, 30)        # what the prompt asks for; the checks above allow some slack either way


def generate_summaries(cfg: Config | None = None, limit: int = 0, dry_run: bool = False) -> dict:
    """Summaries for every paper of cfg's generation_corpus_file into its generated_summaries_file."""
    cfg = settings.resolved() if cfg is None else cfg
    n = cfg.summaries_per_abstract  # at least 2, a training pair (settings.py; llm.check_settings)
    return generate("summaries", SUMMARY_PROMPT, "summaries", lambda obj, paper: parse_summaries(obj, paper, n),
                    cfg.generation_corpus_file, cfg.generated_summaries_file, cfg, values=prompt_values(n),
                    limit=limit, dry_run=dry_run, out_setting="generated_summaries_file")


# Two worked examples, written for this prompt (no corpus text). With Qwen2.5-Coder-1.5B the rules alone
# gave no paper 4 usable summaries ("We introduce ..."); with the examples about a third of the answers
# do (docs/generation.md).
EXAMPLES = (
    ("Debris cover and the melt of Himalayan glaciers",
     "Glaciers in high mountain regions are losing mass, but the contribution of debris cover to melt rates "
     "remains uncertain. We combine 12 years of satellite elevation data with field measurements on 35 "
     "Himalayan glaciers and a surface energy balance model. Thin debris layers enhance melt by up to 30%, "
     "while layers thicker than 10 cm insulate the ice. Our results suggest that regional mass loss is "
     "underestimated by models that ignore debris thickness.",
     ["A thin layer of rock debris speeds up glacier melting, while a thick layer protects the ice beneath it.",
      "Satellite and field data from mountain glaciers show that debris thickness decides whether melting speeds "
      "up or slows down.",
      "Models that ignore how thick the debris on glaciers is likely underestimate how much ice high mountain "
      "regions lose.",
      "Combining satellite observations with an energy balance model reveals the double role of debris in glacier "
      "melt.",
      "Rock debris on mountain glaciers can either speed up or slow down ice loss, depending on its thickness.",
      "Regional estimates of glacier mass loss need to account for the thickness of debris on the ice."]),
    ("CiteCheck: verifying generated answers against long documents",
     "Large language models often produce fluent but unsupported statements when answering questions about long "
     "documents. We propose CiteCheck, a lightweight verifier that links each generated sentence to supporting "
     "passages and rewrites sentences without support. On 4 benchmarks, CiteCheck reduces unsupported claims by "
     "41% with less than 5% loss in answer quality, and it requires no additional training data.",
     ["A small checking step links every sentence of a language model's answer to supporting text and rewrites "
      "the sentences that have no support.",
      "Answers of language models about long documents contain far fewer unsupported claims when each sentence "
      "is verified against the source.",
      "Automatic verification against source passages makes generated answers more trustworthy at almost no cost "
      "in quality.",
      "Made-up statements in answers about long texts can be caught and fixed without any extra training data.",
      "Linking generated sentences to evidence in the document is a cheap way to reduce hallucinated content.",
      "A verifier that needs no training makes question answering over long documents more faithful to the "
      "source."]),
)

SUMMARY_PROMPT = Prompt(
    name="train_summary",
    version=3,
    system="You rewrite scientific abstracts as short sentences in plain words. You answer with a JSON object only.",
    user="""Write $candidates different one-sentence summaries of the abstract below, each $min_words to \
$max_words words.
Rules: use your own plain words, do not copy phrases from the abstract; never mention the paper, the study, \
the authors, "we" or "our"; no numbers or digits. Each summary states the main point on its own, with a \
different wording and emphasis.
Answer with {"summaries": [$candidates strings]} and nothing else.

Title: $title
Abstract: $abstract""",
    retry="Your answer could not be used: $reason. Answer again with $candidates new summaries that follow every "
          "rule, as the JSON object asked for and nothing else.",
    examples=tuple((title, abstract, f"$answer_{i}") for i, (title, abstract, _) in enumerate(EXAMPLES, 1)),
)


def prompt_values(n: int) -> dict:
    """The prompt's fixed values for n summaries per paper (hashed into every output line)."""
    k = n + EXTRA_CANDIDATES
    values = {"n": n, "candidates": k, "min_words": TARGET_WORDS[0], "max_words": TARGET_WORDS[1]}
    # Each example answer shows k of its six summaries (all six if k > 6: repeating one would teach repeats).
    values.update({f"answer_{i}": json.dumps({"summaries": ex[2][:k]}) for i, ex in enumerate(EXAMPLES, 1)})
    return values


def parse_summaries(obj: dict, paper: dict, n: int) -> list[str]:
    """The first n good summaries of {"summaries": [...]} (summary_problem), or InvalidOutput saying which
    failed and why, carrying the good ones as `partial` if there are at least MIN_KEEP."""
    items = obj.get("summaries")
    if not isinstance(items, list):
        raise InvalidOutput(f"no list 'summaries' in the JSON object (keys: {', '.join(map(str, obj)) or 'none'})")
    good: list[str] = []
    texts: list[str] = []  # every summary so far: a repeat of a rejected one is no new summary either
    dropped: list[dict] = []
    for i, item in enumerate(items, 1):
        if isinstance(item, dict) and len(item) == 1:  # [{"summary": "..."}, ...], a common variant
            item = next(iter(item.values()))
        text = clean_text(item)
        problem = summary_problem(text, paper, texts) if text else "is empty or not text"
        texts.append(text)
        if problem:
            dropped.append({"summary": i, "text": text, "reason": problem})
        elif len(good) < n:
            good.append(text)
    if len(good) >= n:
        return good
    reasons = "; ".join(f"summary {d['summary']} {d['reason']}" for d in dropped[:n])
    missing = f"only {len(good)} of the {n} summaries are usable" + (f" ({reasons})" if reasons else "")
    raise InvalidOutput(missing, partial=good if len(good) >= MIN_KEEP else None, dropped=dropped)


def summary_problem(text: str, paper: dict, siblings: list[str]) -> str | None:
    """Why `text` is not a usable summary of `paper` after the `siblings` before it, or None if it is. All
    reasons at once, phrased for the model, which reads them on a retry (one reason at a time, a small
    model fixes that one and keeps the rest)."""
    words, problems = _words(text), []
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        problems.append(f"has {len(words)} words, not {MIN_WORDS} to {MAX_WORDS}")
    if len(split_sentences(text)) > MAX_SENTENCES:
        problems.append(f"has {len(split_sentences(text))} sentences, not one or two")
    banned = BANNED.search(text)
    if banned:
        problems.append(f"mentions the paper or its authors ('{banned.group(0)}')")
    if re.search(r"\d", text):
        problems.append("contains digits")
    title = _words(paper.get("title", ""))
    if len(title) >= 3 and _has_run(words, title, len(title)):
        problems.append("repeats the title")
    if _has_run(words, _words(paper["abstract"]), COPY_RUN):
        problems.append(f"copies {COPY_RUN} or more words in a row from the abstract")
    same = next((i for i, other in enumerate(siblings, 1) if _jaccard(words, _words(other)) > MAX_SIBLING_JACCARD), 0)
    if same:
        problems.append(f"is nearly the same as summary {same}")
    return ", ".join(problems) or None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _has_run(words: list[str], source: list[str], n: int) -> bool:
    """Whether `words` contains n consecutive words that are also consecutive in `source`."""
    return bool(_ngrams(words, n) & _ngrams(source, n))


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / max(len(sa | sb), 1)


# ----------------------------------------------------------------------------------------------
# Quality figures of a summaries file


def quality(summaries_file: str, corpus_file: str) -> dict:
    """Figures of a summaries file, per summary unless said: share with banned phrases, share with digits,
    mean length in words, mean overlap with the abstract (share of the summary's word bigrams found in
    it; papers missing from `corpus_file` are left out of this one), share passing every check of
    summary_problem, and mean distinct summaries per paper."""
    abstracts = {p["id"]: p for p in iter_corpus(corpus_file)}
    papers = summaries = banned = digits = words = passing = 0
    overlaps: list[float] = []
    distinct = 0
    for _, pid, texts in iter_summaries(summaries_file):  # each line checked: a list of strings under 'summaries'
        texts = [clean_text(s) for s in texts if clean_text(s)]
        papers += 1
        distinct += len(set(t.lower() for t in texts))
        paper = abstracts.get(pid)
        for i, text in enumerate(texts):
            summaries += 1
            banned += bool(BANNED.search(text))
            digits += bool(re.search(r"\d", text))
            words += len(_words(text))
            if paper is not None:
                bigrams = _ngrams(_words(text), 2)
                overlaps.append(len(bigrams & _ngrams(_words(paper["abstract"]), 2)) / max(len(bigrams), 1))
                passing += summary_problem(text, paper, texts[:i]) is None
    share = lambda k, total=summaries: round(k / total, 3) if total else None  # noqa: E731
    return {"papers": papers, "summaries": summaries, "distinct_per_paper": share(distinct, papers),
            "mean_words": share(words), "banned_phrases": share(banned), "digits": share(digits),
            "abstract_bigram_overlap": round(sum(overlaps) / len(overlaps), 3) if overlaps else None,
            "pass_all_checks": share(passing, len(overlaps))}


def quality_table(figures: dict, name: str) -> str:
    """Markdown table of quality()'s figures."""
    rows = [f"| {name} | " + " | ".join("n/a" if v is None else str(v) for v in figures.values()) + " |"]
    return "\n".join(["| file | " + " | ".join(figures) + " |", "|---" * (len(figures) + 1) + "|", *rows])


def main(argv: list[str] | None = None) -> None:
    def run(dry_run: bool, limit: int, quality_of: str) -> None:
        if quality_of:
            cfg = settings.resolved()
            print(quality_table(quality(quality_of, cfg.generation_corpus_file), quality_of))
        else:
            generate_summaries(limit=limit, dry_run=dry_run)
    command_line(lambda quality="", **flags: run(quality_of=quality, **flags), argv, flags={"quality": ""})


if __name__ == "__main__":
    main(sys.argv[1:])
