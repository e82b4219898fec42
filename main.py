"""SemCSE end to end, as the paper's main.py: train on summary pairs, load the best checkpoint,
evaluate it, beside the untrained encoder it started from, on the semantic benchmark.

    python main.py                      # the embedded default: MiniLM trained on ACLSum summaries, then
                                        # benchmarked on the labelled arXiv corpus (data/arxiv_benchmark.jsonl)
    python main.py --metric=cosine --save_name=SemCSE_cosine
    python main.py --encoder_checkpoint=KISTI-AI/Scideberta-full --train_summaries_file=data/llm_summaries.jsonl
    python main.py --resume             # after an interruption: training goes on from its last checkpoint,
                                        # the benchmark keeps the tasks it already scored
    python main.py --overwrite          # train afresh into a run folder that holds an earlier run
"""
import settings
from load_data import ensure_default_data
from semantic_benchmark import evaluate_model_semantics
from semcse import cli
from semcse.benchmark import queries_to_use
from semcse.model import for_scoring, load_model
from train_embedding_model import train_embedding_model


def main(resume: bool = False, overwrite: bool = False) -> None:
    # settings.set_save_name("SemCSE")                          # the paper's setters; or edit settings.py
    # settings.set_encoder_checkpoint("KISTI-AI/Scideberta-full")
    cfg = settings.resolved()  # settings.py + the command line, read once and passed down
    # Build data/ from the installed aclsum package if the default files are missing (no download).
    ensure_default_data(cfg.data_dir)
    queries_to_use(cfg)  # a mistyped --queries_file is refused now, not after the training
    best_dir = train_embedding_model(cfg, resume=resume, overwrite=overwrite)
    model, tokenizer = load_model(best_dir, cfg.device, offline=cfg.offline, trust_remote_code=cfg.trust_remote_code)
    model = for_scoring(model, cfg.precision)  # only scored from here: bf16 weights where autocast is bf16
    # The paper's evaluation call, with the untrained encoder scored the same way beside the trained one:
    # the table then reads base -> trained, and Perf. is 0 at the base (> 0 reads "training helped").
    evaluate_model_semantics(model, tokenizer, output_processing="last_hidden", metric=cfg.metric,
                             baseline=cfg.encoder_checkpoint, overwrite=overwrite, cfg=cfg)


if __name__ == "__main__":
    cli.cli(main, flags={"resume": False, "overwrite": False})
