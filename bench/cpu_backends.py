"""Would ONNX Runtime or OpenVINO score faster on this CPU than PyTorch? The same model, texts and pooling.

    pip install onnxruntime onnx openvino      # optional: a backend that is not installed is skipped
    python bench/cpu_backends.py [--n_texts=256] [--repeats=3] [--encode_batch_size=64]

sentence-transformers' own ONNX / OpenVINO backends export through optimum-onnx / optimum-intel, whose
releases pin transformers < 4.58 (this project pins 5.23), so the encoder is exported here the way they
do it (torch.onnx, opset 17, dynamic batch and length; once, into a temporary folder) and run by each
runtime at fp32 with as many threads as PyTorch, on the same length-sorted, padded batches; mean
pooling and Normalize (all-MiniLM-L6-v2 as shipped) are applied to every side's token states alike.
Prints texts/s, the ratio to PyTorch (median of `repeats`) and the smallest cosine to PyTorch's vectors.
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from semcse import cli  # noqa: E402
import settings  # noqa: E402
from common import min_cosine  # noqa: E402


def main(n_texts: int = 256, repeats: int = 3) -> None:
    import torch

    from load_data import load_corpus
    from semcse.model import encode, load_model, transformer_of

    model, tok = load_model(settings.encoder_checkpoint, "cpu")
    papers = load_corpus(settings.benchmark_corpus_file)[:n_texts]
    texts = [p["title"] + tok.sep_token + p["abstract"] for p in papers]
    sides = {"PyTorch (model.encode, fp32)": lambda: encode(model, tok, texts, settings.encode_batch_size,
                                                            precision="fp32", show_progress=False)}
    path = os.path.join(tempfile.mkdtemp(), "encoder.onnx")
    export(transformer_of(model), tok, texts[:2], path)
    for name, run in backends(path, torch.get_num_threads()).items():
        sides[name] = lambda run=run: pooled(run, tok, texts, settings.encode_batch_size, model.max_seq_length,
                                             model.get_embedding_dimension())
    print(f"cpu_backends: {len(texts)} title+abstract texts, batch {settings.encode_batch_size}, "
          f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}, fp32")
    print("| side | texts/s | ratio to PyTorch | min cosine to PyTorch |\n|---|---|---|---|")
    base = ref = None  # the first side's (PyTorch's) time and vectors
    for name, fn in sides.items():
        fn()  # warm-up
        times, out = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        base, ref = base or t, out if ref is None else ref
        print(f"| {name} | {len(texts) / t:.1f} | {base / t:.2f}x | {min_cosine(out, ref):.6f} |", flush=True)


def export(encoder, tok, sample: list[str], path: str) -> None:
    """The Hugging Face encoder as ONNX: (input_ids, attention_mask, token_type_ids) -> last hidden states."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, e):
            super().__init__()
            self.e = e

        def forward(self, ids, mask, types):
            return self.e(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    ex = tok(sample, padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in ("ids", "mask", "types", "states")}
    torch.onnx.export(Encoder(encoder).eval(), (ex["input_ids"], ex["attention_mask"], ex["token_type_ids"]), path,
                      input_names=["ids", "mask", "types"], output_names=["states"], dynamic_axes=axes,
                      opset_version=17, dynamo=False)


def backends(path: str, threads: int) -> dict:
    """{name: run(feeds) -> token states} for each installed runtime."""
    out = {}
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        out[f"ONNX Runtime {ort.__version__}"] = lambda feeds: session.run(None, feeds)[0]
    except ImportError:
        print("onnxruntime not installed: skipped")
    try:
        import openvino as ov

        core = ov.Core()
        net = core.compile_model(core.read_model(path), "CPU",
                                 {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        out[f"OpenVINO {ov.__version__.split('-')[0]}"] = lambda feeds: net(feeds)[0]
    except ImportError:
        print("openvino not installed: skipped")
    return out


def pooled(run, tok, texts: list[str], batch_size: int, max_length: int, dim: int):
    """Mean pooling + L2 normalization of `run`'s token states, batches sorted by length as encode() does."""
    import numpy as np

    ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        b = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="np")
        ids_, mask = b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)
        states = run({"ids": ids_, "mask": mask, "types": np.zeros_like(ids_)})
        m = mask[..., None].astype(np.float32)
        v = (states * m).sum(1) / m.sum(1)
        out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


if __name__ == "__main__":
    cli.cli(main, flags={"n_texts": 256, "repeats": 3})
