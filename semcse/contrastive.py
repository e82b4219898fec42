"""One contrastive step of training: process sharding, GradCache and SARCSE around the loss, the
symmetric in-batch InfoNCE loss itself, and an epoch's pairs (see train_embedding_model.py)."""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

import settings
from load_data import make_pairs
from semcse.distributed import gather_pairs, shard, sum_gradients, world_and_rank
from semcse.model import autocast, embed, similarity, tokenize, transformer_of
from semcse.model_setup import ModelSetup
from semcse.sarcse import ReconstructionHead
from settings import Config, SettingsError


def contrastive_step(model: torch.nn.Module, tokenizer, batch: list[tuple[str, str, str]], cfg: Config,
                     setup: ModelSetup, scaler: torch.amp.GradScaler | None = None,
                     head: ReconstructionHead | None = None) -> torch.Tensor:
    """Forward and backward of one contrastive batch of pairs (paper id, a, b); returns the loss.

    `setup`: the run's model settings (metric, max_length, precision, device; model_setup.training_setup);
    `cfg`: the training settings (temperature, mini_batch_size, reconstruction_weight).

    Leaves in each parameter's .grad the gradient of the loss over the *global* batch:
    - Several processes (torchrun): this process embeds only its contiguous shard of the pairs; the
      embeddings of all processes are gathered so that negatives come from the global batch, and the
      gradients, each the part flowing through this process's embeddings, are summed across processes.
    - GradCache (mini_batch_size > 0): the shard is embedded in mini-batches without grad; the loss is
      backpropagated to the cached embeddings only; then each mini-batch is embedded again with grad,
      with the RNG replayed so dropout masks match, and its embedding gradient is pushed through it.
      Memory then grows with mini_batch_size, not with batch_size; the result equals the plain loss.
    - SARCSE (`head` given): adds reconstruction_weight * the head's loss on this process's texts.
    """
    world, rank = world_and_rank()
    mine, sizes = shard(batch, world, rank)
    texts = [p[1] for p in mine] + [p[2] for p in mine]  # [a_1..a_m, b_1..b_m]: 2m texts
    aux = []  # SARCSE's reconstruction loss of each forward pass

    def forward(chunk: list[str]) -> torch.Tensor:  # [len(chunk), dim] float32
        enc = tokenize(tokenizer, chunk, setup.max_length, padding=True, return_tensors="pt")
        pin = setup.device.type == "cuda"
        enc = {k: (v.pin_memory() if pin else v).to(setup.device, non_blocking=True) for k, v in enc.items()}
        with autocast(setup.device, setup.precision):
            if head is None:
                return embed(model, enc).float()  # through all the model's modules
            features = model(dict(enc))  # all modules; the last layer's token states stay in it
            target = transformer_of(model).get_input_embeddings()(enc["input_ids"]).detach()
            aux.append(head(features["token_embeddings"].float(), enc["input_ids"], enc["attention_mask"], target.float()))
            return features["sentence_embedding"].float()

    size = cfg.mini_batch_size or len(texts)
    if size < len(texts) and head is not None:
        raise SettingsError("objective=sarcse does not combine with GradCache: set mini_batch_size=0")
    local, replay = grad_cache(forward, texts, size) if size < len(texts) else (forward(texts), None)
    a, b = gather_pairs(local, sizes, rank)
    loss = contrastive_loss(a, b, setup.metric, settings.temperature_for(cfg))
    if aux:  # each process adds its share, so the summed gradient is that of the mean over processes
        loss = loss + cfg.reconstruction_weight * aux[0] / world
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if replay is not None:
        replay(local.grad)
    if world > 1:
        sum_gradients([*model.parameters(), *(head.parameters() if head is not None else [])])
    return loss.detach()


def grad_cache(forward: Callable[[list[str]], torch.Tensor], texts: list[str], size: int
               ) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
    """GradCache (Gao et al. 2021). First pass: embed `texts` in mini-batches of `size` without grad,
    keeping the RNG state before each. Returns the embeddings as a leaf for the loss's backward, and
    `replay(grad)`, the second pass: each mini-batch embedded again with grad under the same dropout
    masks, and its slice of the embeddings' gradient pushed through it into the parameters."""
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    states, embs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(rng_state())
            embs.append(forward(chunk))
    after = rng_state()

    def replay(grads: torch.Tensor) -> None:
        start = 0
        for chunk, state in zip(chunks, states):
            set_rng_state(state)
            forward(chunk).backward(grads[start:start + len(chunk)])
            start += len(chunk)
        set_rng_state(after)

    return torch.cat(embs).requires_grad_(), replay


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, metric: str, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. a, b: [batch, dim], row i of a and b are a positive pair.

    Euclidean: minus the distances, in units of this batch's mean distance between non-partners (a
    constant for the gradient). Cosine lies in [-1, 1] whatever the vectors; raw distances do not
    (MiniLM's raw CLS vectors lie ~6 apart, unit vectors ~1, a random encoder's ~0.01), so a fixed
    temperature would make the softmax flat for one and explode for another."""
    sim = similarity(a, b, metric)  # [batch, batch]; the scoring's similarity too
    if metric == "euclidean":
        partners = torch.eye(len(a), dtype=torch.bool, device=a.device)
        sim = sim / (-sim[~partners]).mean().detach() if len(a) > 1 else sim
    logits = sim / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def training_pairs(counts: Mapping[str, int], objective: str, rng: random.Random) -> list[tuple[str, int, int]]:
    """One epoch's pairs (paper id, i, j) of indices into the paper's summaries (`counts`: how many it
    has): semcse, two different summaries of a paper; simcse_unsup and sarcse, each summary with
    itself (the two views then differ only by their dropout masks)."""
    if objective == "semcse":
        return make_pairs(counts, rng)
    pairs = [(pid, i, i) for pid in sorted(counts) for i in range(counts[pid])]
    rng.shuffle(pairs)
    return pairs


def rng_state() -> tuple:
    """The CPU and CUDA RNG states (dropout masks), saved with checkpoints and replayed by GradCache."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None and torch.cuda.is_available():  # a GPU checkpoint resumed on a CPU: no CUDA RNG
        torch.cuda.set_rng_state_all(state[1])
