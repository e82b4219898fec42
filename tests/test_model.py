"""Saved models reload through AutoModel and SentenceTransformer with the same embeddings as encode()."""
import contextlib

import numpy as np
import pytest
import torch
from transformers import AutoModel

import settings
from semcse import model as M
from semcse.model_setup import resolve_model_settings

TEXTS = ["Graph neural networks for parsing.", "A short one.",
         "We study speech recognition with a much longer sentence that has many more tokens in it."] * 3


@pytest.mark.parametrize("metric, pooling", [("euclidean", "cls"), ("cosine", "mean")])
def test_saved_model_reloads_with_equal_embeddings(tmp_path, tiny_model_dir, metric, pooling):
    from sentence_transformers import SentenceTransformer

    model, tok = M.load_model(tiny_model_dir, "cpu", pooling=pooling, metric=metric)
    ours = M.encode(model, tok, TEXTS, batch_size=4, max_length=32, precision="fp32")
    path = M.save_model(model, str(tmp_path / "saved"))

    st = SentenceTransformer(path, device="cpu")
    assert st.similarity_fn_name == metric and st.max_seq_length == 128  # the encoder's own, not training's
    st.max_seq_length = 32
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=4), ours, atol=1e-5)

    hf = AutoModel.from_pretrained(path).eval()  # the encoder alone, pooled by hand
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden, mask = hf(**enc).last_hidden_state, enc["attention_mask"].unsqueeze(-1).float()
        direct = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(direct.numpy(), ours, atol=1e-5)

    reloaded, tok2 = M.load_model(path, "cpu")  # pooling and metric come with the folder
    assert (M.pooling_of(reloaded), reloaded.similarity_fn_name) == (pooling, metric)
    np.testing.assert_allclose(M.encode(reloaded, tok2, TEXTS, 4, 32, "fp32"), ours, atol=1e-6)
    own = resolve_model_settings(settings.resolved(pooling="auto", metric="auto"), path)
    assert {"pooling": own.pooling, "metric": own.metric} == {"pooling": pooling, "metric": metric}


def test_auto_means_the_models_own(tiny_model_dir):
    from settings import packaged_minilm as _packaged_minilm

    plain, _ = M.load_model(tiny_model_dir, "cpu")  # a plain encoder: CLS and Euclidean, as SemCSE
    assert (M.pooling_of(plain), plain.similarity_fn_name, plain.plain_encoder) == ("cls", "euclidean", True)
    assert M.default_max_length(plain) == 128  # its position limit
    minilm, _ = M.load_model(_packaged_minilm(), "cpu")
    s = M.scoring_of(minilm)
    assert (s["pooling"], s["similarity"], s["normalized"], s["max_length"], s["dim"]) == ("mean", "cosine", True, 256, 384)
    own = resolve_model_settings(settings.resolved(pooling="auto", metric="euclidean"), _packaged_minilm())
    assert {"pooling": own.pooling, "metric": own.metric} == \
        {"pooling": "mean", "metric": "euclidean"}


def test_encode_keeps_input_order_and_bf16_is_close(tiny_model_dir):
    model, tok = M.load_model(tiny_model_dir, "cpu")
    full = M.encode(model, tok, TEXTS, batch_size=2, max_length=32, precision="fp32")
    one_by_one = np.stack([M.encode(model, tok, [t], 1, 32, precision="fp32")[0] for t in TEXTS])
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)  # sorting and padding change nothing
    half = M.encode(model, tok, TEXTS, batch_size=2, max_length=32, precision="bf16")
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99
    assert M.encode(model, tok, [], 2, 32).shape == (0, 32)
    with pytest.raises(M.SettingsError, match="encode_batch_size"):
        M.encode(model, tok, TEXTS, batch_size=0)
    # beyond the position limit (128) with a long text: one line naming the settings, no IndexError
    with pytest.raises(M.SettingsError, match=r"longer than .* position limit 128: set max_length"):
        M.encode(model, tok, ["word " * 300], max_length=400)


def test_a_model_only_scored_gets_bf16_weights_and_close_vectors(tiny_model_dir):
    model, tok = M.load_model(tiny_model_dir, "cpu")
    full = M.encode(model, tok, TEXTS, batch_size=2, max_length=32, precision="fp32")
    assert M.for_scoring(model, "fp32") is model and next(model.parameters()).dtype == torch.float32
    scored = M.encode(M.for_scoring(model, "bf16"), tok, TEXTS, batch_size=2, max_length=32, precision="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16 and scored.dtype == np.float32
    cos = (full * scored).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(scored, axis=1)
    assert cos.min() > 0.99


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU reports these capability flags and these matmul timings (ms by dtype)."""
    def pretend(flags: dict, ms: dict | None = None):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags))
        if ms is not None:
            monkeypatch.setattr(M, "_matmul_ms", lambda dtype, repeats=5: ms[dtype])
        M.resolve_precision.cache_clear()
    yield pretend
    M.resolve_precision.cache_clear()


def test_auto_precision_is_fp32_on_a_cpu_without_native_bf16(cpu_flags, tiny_model_dir, capsys, monkeypatch):
    timed = []
    cpu_flags({"avx2": True, "avx512_bf16": False, "amx_bf16": False})
    monkeypatch.setattr(M, "_matmul_ms", lambda dtype, repeats=5: timed.append(dtype) or 1.0)  # the flags decide
    assert M.resolve_precision("cpu", "auto") == "fp32" and timed == []
    assert M.resolve_precision("cpu", "auto") == "fp32"  # decided once per process, printed once
    out = capsys.readouterr().out
    assert out.count("precision: fp32 on cpu (this CPU") == 1 and "no native bf16" in out
    model, tok = M.load_model(tiny_model_dir, "cpu")
    assert next(M.for_scoring(model, "auto").parameters()).dtype == torch.float32
    assert isinstance(M.autocast(torch.device("cpu"), "auto"), contextlib.nullcontext)


def test_auto_precision_is_bf16_only_where_native_and_measured_faster(cpu_flags, capsys):
    cpu_flags({"avx512_bf16": True}, ms={torch.float32: 3.0, torch.bfloat16: 1.0})
    assert M.resolve_precision("cpu", "auto") == "bf16"
    assert "native bf16 (avx512_bf16), measured 3.0x" in capsys.readouterr().out
    cpu_flags({"amx_bf16": True}, ms={torch.float32: 1.0, torch.bfloat16: 1.0})  # flags a VM does not honour
    assert M.resolve_precision("cpu", "auto") == "fp32"
    assert "reports amx_bf16 but bf16 measured 1.00x" in capsys.readouterr().out


def test_explicit_precision_is_kept_and_fp16_needs_cuda(cpu_flags):
    cpu_flags({"avx2": True})
    assert M.resolve_precision("cpu", "bf16") == "bf16" and M.resolve_precision("cpu", "fp32") == "fp32"
    with pytest.raises(M.ModelError, match="fp16 needs a CUDA device"):
        M.resolve_precision("cpu", "fp16")


def test_similarity_is_one_definition_for_torch_and_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    for metric in ("cosine", "euclidean", "dot"):
        t = M.similarity(torch.tensor(a), torch.tensor(b), metric).numpy()
        np.testing.assert_allclose(M.similarity(a, b, metric), t, rtol=1e-12)
    np.testing.assert_allclose(M.similarity(a, b, "euclidean"), -np.linalg.norm(a[:, None] - b[None], axis=-1))
    with pytest.raises(M.SettingsError, match="setting 'metric'"):
        M.similarity(a, b, "manhattan")


def test_partner_ranks():
    e = np.eye(4)
    assert M.partner_ranks(e, e, metric="euclidean").tolist() == [1, 1, 1, 1]
    # query 0 vs reversed candidates: one candidate closer, two tied with the true one -> 1 + 1 + 2/2
    assert M.partner_ranks(e, e[::-1], metric="cosine").tolist() == [3, 3, 3, 3]
    q = np.array([[0.0], [1.0], [2.0]])
    c = np.array([[2.0], [1.0], [0.0]])
    assert M.partner_ranks(q, c, metric="euclidean", block=1).tolist() == [3, 1, 3]
    assert M.partner_ranks(np.ones((5, 2)), np.ones((5, 2)), metric="euclidean").tolist() == [3.0] * 5


def test_missing_models_fail_clearly(tmp_path):
    with pytest.raises(M.ModelError, match="no weights"):
        M.load_model(str(tmp_path), "cpu")
    with pytest.raises(M.ModelError, match="never downloads"):
        M.load_model("nobody/no-such-model-xyz", "cpu")


def test_bad_model_folders_name_the_folder_and_the_fault(tmp_path, tiny_model_dir):
    """Damaged, mismatched or wrong-architecture folders give our ModelError, never random weights."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, T5Config, T5Model

    def copy(name: str) -> str:
        return shutil.copytree(tiny_model_dir, tmp_path / name)

    def edit_config(path: str, **changes) -> None:
        cfg = json.load(open(os.path.join(path, "config.json")))
        json.dump({**cfg, **changes}, open(os.path.join(path, "config.json"), "w"))

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    damaged = copy("damaged")
    weights = os.path.join(damaged, "model.safetensors")
    open(weights, "r+b").truncate(os.path.getsize(weights) // 2)  # a copy cut short
    resized = copy("resized")
    edit_config(resized, hidden_size=64)
    wrong = copy("wrong_arch")  # GPT-2 weights under a BERT config.json
    GPT2Model(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=1, n_head=2)).save_pretrained(wrong)
    edit_config(wrong, **json.load(open(os.path.join(tiny_model_dir, "config.json"))))
    t5 = str(tmp_path / "t5")
    T5Model(T5Config(vocab_size=tok.vocab_size, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)).save_pretrained(t5)
    tok.save_pretrained(t5)
    unknown = copy("unknown")
    edit_config(unknown, model_type="no-such-architecture")
    cases = {damaged: "SafetensorError", resized: "tensor shapes differ", wrong: "tensors missing, e.g. ",
             t5: "encoder-decoder model (t5)", unknown: "no-such-architecture"}
    for path, words in cases.items():
        with pytest.raises(M.ModelError) as e:
            M.load_model(str(path), "cpu")
        assert str(e.value).startswith(str(path)) and words in str(e.value) and "\n" not in str(e.value)

    # safetensors where present: a broken pickle beside them is never opened
    both = copy("both")
    open(os.path.join(both, "pytorch_model.bin"), "wb").write(b"not a pickle")
    model, _ = M.load_model(str(both), "cpu")
    assert model.config.hidden_size == 32

    # through a script: one line naming the folder, exit code 2
    res = subprocess.run([sys.executable, os.path.join(ROOT, "semantic_benchmark.py"), f"--model={wrong}",
                          f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {wrong}: its weights do not fit its config.json")


def test_folders_without_tokenizer_or_config_or_with_another_models_tokenizer_are_refused(tmp_path, tiny_model_dir):
    """Such folders used to load with a 5-token tokenizer (every word [UNK]) and score chance."""
    import os
    import shutil

    def folder(name: str, keep) -> str:
        path = tmp_path / name
        os.makedirs(path)
        for f in os.listdir(tiny_model_dir):
            if keep(f):
                shutil.copy(os.path.join(tiny_model_dir, f), path)
        return str(path)

    weights_only = folder("weights_only", lambda f: f in ("config.json", "model.safetensors"))
    with_config = folder("tokenizer_config_only", lambda f: f in ("config.json", "model.safetensors",
                                                                   "tokenizer_config.json"))
    other = folder("other_vocab", lambda f: f in ("config.json", "model.safetensors", "tokenizer_config.json"))
    (tmp_path / "other_vocab" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    no_config = folder("no_config", lambda f: f != "config.json")
    cases = {weights_only: "no tokenizer vocabulary", with_config: "no tokenizer vocabulary",
             other: "tokenizer has 7 tokens for 30522 token embeddings", no_config: "no config.json"}
    for path, words in cases.items():
        with pytest.raises(M.ModelError) as e:
            M.load_model(path, "cpu")
        assert str(e.value).startswith(path) and words in str(e.value) and "\n" not in str(e.value)


def test_a_sentence_transformers_folder_with_a_damaged_module_is_refused(tmp_path, tiny_model_dir):
    import os

    from sentence_transformers.sentence_transformer.modules import Dense

    model, _ = M.load_model(tiny_model_dir, "cpu")
    model.append(Dense(32, 8))
    path = M.save_model(model, str(tmp_path / "dense"))
    assert M.encode(M.load_model(path, "cpu")[0], model.tokenizer, TEXTS).shape == (len(TEXTS), 8)
    dense = next(d for d in os.listdir(path) if d.endswith("Dense"))
    for f in os.listdir(os.path.join(path, dense)):
        if f.startswith("model."):
            os.remove(os.path.join(path, dense, f))
    with pytest.raises(M.ModelError, match=f"^{path}: cannot load its sentence-transformers modules"):
        M.load_model(path, "cpu")
    with open(os.path.join(path, "modules.json"), "w") as f:
        f.write("{damaged")
    with pytest.raises(M.ModelError, match="modules.json is damaged"):
        M.load_model(path, "cpu")


@pytest.mark.parametrize("name, content, words", [
    ("tokenizer.json", "{not json", "tokenizer.json: is not valid JSON (damaged model folder?)"),
    ("tokenizer_config.json", "{not json", "tokenizer_config.json: is not valid JSON (damaged model folder?)"),
    ("tokenizer_config.json", "[1]", "tokenizer_config.json: is damaged (expected a JSON object)"),
    ("tokenizer.json", '{"a": 1}', "cannot load its tokenizer (ValueError: "),
])
def test_a_plain_encoder_with_a_damaged_tokenizer_file_is_one_line(tmp_path, tiny_model_dir, capsys, name, content,
                                                                    words):
    import shutil

    import semantic_benchmark as sb

    path = shutil.copytree(tiny_model_dir, tmp_path / "damaged")
    (path / name).write_text(content)
    with pytest.raises(M.ModelError) as e:
        M.load_model(str(path), "cpu")
    assert str(e.value).startswith(str(path)) and words in str(e.value) and "\n" not in str(e.value)
    from conftest import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"p{i}", "title": f"T{i}", "abstract": "A. B."} for i in range(3)])
    with pytest.raises(SystemExit) as done:
        sb.main([f"--model={path}", f"--output_dir={tmp_path / 'out'}", "--queries_file=", f"--corpus={corpus}"])
    assert done.value.code == 2 and capsys.readouterr().err.startswith(f"error: {path}")


def test_a_model_whose_similarity_training_does_not_support_is_named(tmp_path, tiny_model_dir, summaries_file):
    from train_embedding_model import train_embedding_model

    model, _ = M.load_model(tiny_model_dir, "cpu", metric="dot")
    dot = M.save_model(model, str(tmp_path / "dot"))
    with pytest.raises(M.ModelError, match=rf"^{dot}: its similarity is 'dot' \(similarity_fn_name\); training and "
                                           rf"its validation support cosine and euclidean: choose one with --metric$"):
        train_embedding_model(output_dir=str(tmp_path), encoder_checkpoint=dot, train_summaries_file=summaries_file,
                              batch_size=8, validation_size=10, max_steps=2, eval_every=2, device="cpu")
    assert not (tmp_path / "SemCSE").exists()
    best = train_embedding_model(output_dir=str(tmp_path), encoder_checkpoint=dot, train_summaries_file=summaries_file,
                                 batch_size=8, validation_size=10, max_steps=2, eval_every=2, device="cpu",
                                 metric="cosine", precision="fp32")
    assert M.load_model(best, "cpu")[0].similarity_fn_name == "cosine"


def test_a_full_disk_named_by_torch_or_safetensors_is_one_line_with_the_free_space(tmp_path, tiny_model_dir,
                                                                                      monkeypatch):
    import collections
    import shutil

    import torch
    from safetensors import SafetensorError

    model, _ = M.load_model(tiny_model_dir, "cpu")
    folder = M.save_model(model, str(tmp_path / "last"))
    before = sorted(p.name for p in tmp_path.iterdir())
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**19, 2**19))  # 0.5 MB free

    def torch_full(*args, **kwargs):  # what torch.save raises on a full disk: nothing that names it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    def safetensors_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    for patch, why in ((lambda m: m.setattr(torch, "save", torch_full), "out of disk space"),
                       (lambda m: m.setattr("transformers.modeling_utils.safe_save_file", safetensors_full),
                        "No space left on device")):
        with monkeypatch.context() as m:
            patch(m)
            with pytest.raises(M.ModelError, match=rf"^{folder}: cannot save the model \({why}; 0.5 MB free on its "
                                                   rf"disk, the model needs about [\d.]+ MB\); its previous save is "
                                                   rf"kept$"):
                M.save_model(model, folder, training_state={"step": 1})
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .tmp left; last/ as it was
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 0, 2**40))
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="unexpected pos"):  # room enough: a bug
        m.setattr(torch, "save", torch_full)
        M.save_model(model, folder, training_state={"step": 1})


def test_a_normal_texts_vectors_are_unchanged_by_the_cut_before_tokenizing(tiny_model_dir, monkeypatch):
    model, tok = M.load_model(tiny_model_dir, "cpu")
    long_normal = " ".join(["Graph neural networks learn representations of molecules and proteins."] * 400)
    texts = TEXTS + [long_normal, "Ünïcödé text — with dashes, “quotes” and numbers 12.5%. " * 50]
    cut = M.encode(model, tok, texts, precision="fp32")
    monkeypatch.setattr(M, "CHARS_PER_TOKEN", 10**9)  # no cut: the whole text tokenized, then truncated
    whole = M.encode(model, tok, texts, precision="fp32")
    assert np.array_equal(cut, whole)
    assert len(long_normal) > 4 * 128 * M._longest_token(tok)  # it was cut, and its first 128 tokens kept


def test_a_huge_text_is_tokenized_fast_and_in_bounded_memory(tiny_model_dir):
    """A 20 MB abstract (a line the readers accept) used to take 156 s and 4 GB to tokenize."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    # Peak memory from VmHWM (this process's own; ru_maxrss would carry the forking pytest's peak over exec).
    code = (f"import re, sys, time; sys.path.insert(0, {ROOT!r}); from semcse.model import encode, load_model; "
            f"m, tok = load_model({tiny_model_dir!r}, 'cpu'); text = 'Graph networks answer questions. ' * 600_000; "
            f"t = time.time(); v = encode(m, tok, [text, 'short'], precision='fp32'); "
            f"peak = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024; "
            f"print(time.time() - t, peak, v.shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds, megabytes, shape = done.stdout.strip().splitlines()[-1].split(maxsplit=2)  # after "precision: ..."
    assert float(seconds) < 5 and int(megabytes) < 1024 and shape.strip() == "(2, 32)", done.stdout + done.stderr
