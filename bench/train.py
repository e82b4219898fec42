"""Training speed: our training step against sentence-transformers' trainer, same work.

    python bench/train.py [--steps=20] [--batch_size=32] [--max_length=128] [--precision=auto|fp32|bf16]
                          [--mini_batch_size=0] [--encoder_checkpoint=...] [--device=auto]

Both sides train the encoder (default the packaged all-MiniLM-L6-v2) on the same summary pairs (the
default training data: the LLM summaries), with the same batch size, max length, AdamW settings,
gradient clipping and precision (model.resolve_precision's choice, printed: on an AVX2-only CPU fp32,
where native bf16 or on a GPU bf16), a symmetric in-batch loss at the same temperature (ours: cosine /
0.05 both ways; theirs: MultipleNegativesRankingLoss, scale 20, directions query_to_doc + doc_to_query;
with --mini_batch_size, GradCache on both sides: ours, and CachedMultipleNegativesRankingLoss), each in
its own child process. After 3 warm-up steps, `steps` optimizer steps are timed. The last line is the
ratio of pairs per second.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402
import settings  # noqa: E402
from common import peak_mb, run_in_child  # noqa: E402

WARMUP = 3


def pairs(n: int) -> list[tuple[str, str, str]]:
    from load_data import load_summaries, make_pairs

    s = load_summaries(settings.train_summaries_file)
    counts = {pid: len(texts) for pid, texts in s.items()}
    ps = [(pid, s[pid][i], s[pid][j]) for pid, i, j in make_pairs(counts, random.Random(0))]
    return (ps * (n // len(ps) + 1))[:n]


def ours(cfg: dict, steps: int, queue) -> None:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from load_data import batches_without_duplicates
    from semcse.model import load_model, resolve_device
    from semcse.model_setup import training_setup
    from train_embedding_model import contrastive_step

    settings.update(**cfg)
    cfg = settings.resolved()
    device = resolve_device(cfg.device)
    data = pairs((steps + WARMUP) * cfg.batch_size * 2)
    batches = [[data[i] for i in b] for b in batches_without_duplicates([p[0] for p in data], cfg.batch_size)]
    model, tok = load_model(cfg.encoder_checkpoint, str(device))
    setup = training_setup(cfg, model, device)  # pooling, metric, max_length, precision: decided once
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    sched = get_linear_schedule_with_warmup(opt, 0, steps + WARMUP)
    for i, batch in enumerate(batches[:steps + WARMUP]):
        if i == WARMUP:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        contrastive_step(model, tok, batch, cfg, setup)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    queue.put({"seconds": time.perf_counter() - start, "peak_mb": peak_mb()})


def theirs(cfg: dict, steps: int, queue) -> None:
    import tempfile

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from semcse.model import resolve_device, resolve_precision

    settings.update(**cfg)
    device = resolve_device(settings.device)
    precision = resolve_precision(device.type, settings.precision)
    data = pairs((steps + WARMUP) * settings.batch_size)
    model = SentenceTransformer(settings.encoder_checkpoint, device=str(device))
    model.max_seq_length = settings.max_length
    both = ("query_to_doc", "doc_to_query")
    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=settings.mini_batch_size, directions=both)
            if settings.mini_batch_size else MultipleNegativesRankingLoss(model, directions=both))
    times = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                times["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times["end"] = time.perf_counter()

    args = SentenceTransformerTrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=settings.batch_size, max_steps=steps + WARMUP,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        warmup_steps=0, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device.type == "cpu", save_strategy="no", report_to="none",
        logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, batch_sampler="no_duplicates")
    dataset = Dataset.from_dict({"anchor": [p[1] for p in data], "positive": [p[2] for p in data]})
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                               callbacks=[Clock()]).train()
    queue.put({"seconds": times["end"] - times["start"], "peak_mb": peak_mb()})


def main(steps: int = 20) -> None:
    """Time our training step against SentenceTransformerTrainer + MNRL at the same precision."""
    import torch

    from semcse.model import resolve_device, resolve_precision

    precision = resolve_precision(resolve_device(settings.device).type, settings.precision)
    n = steps * settings.batch_size
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"
    print(f"train: {steps} timed steps of {settings.batch_size} pairs, max_length {settings.max_length}, "
          f"precision {precision}, GradCache mini-batch {settings.mini_batch_size or 'off'}, device {device}")
    print("| side | pairs/s | peak memory (MiB) |\n|---|---|---|", flush=True)
    a = run_in_child(ours, settings.resolved().as_dict(), steps)
    print(f"| ours: contrastive_step + AdamW | {n / a['seconds']:.1f} | {a['peak_mb']:.0f} |", flush=True)
    b = run_in_child(theirs, settings.resolved().as_dict(), steps)
    print(f"| SentenceTransformerTrainer + {'Cached' if settings.mini_batch_size else ''}MNRL | "
          f"{n / b['seconds']:.1f} | {b['peak_mb']:.0f} |")
    print(f"ratio (ours / sentence-transformers, pairs per second): {b['seconds'] / a['seconds']:.2f}x")


if __name__ == "__main__":
    cli.cli(main, flags={"steps": 20})
