"""SARCSE (Liu et al. 2024): a token-reconstruction head trained alongside the contrastive loss
(objective "sarcse" in train_embedding_model.py); the saved model has no head."""
from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
import torch.nn as nn
import torch.nn.functional as F

from semcse.model import tokenize


class ReconstructionHead(nn.Module):
    """SARCSE's token-reconstruction autoencoder on the encoder's last-layer token states.

    TextCNN encoder: Conv1d over the tokens with kernel sizes 3, 4 and 5 ("same" padding), each with
    dim // 4 channels, ReLU -> a per-token code of 3 * dim // 4 (a bottleneck below dim). Decoder:
    Linear back to dim. It must rebuild each token's *input* word embedding (detached), so the last
    layer has to keep what identifies the tokens. Loss per token = mean squared error over dim,
    averaged with weights `token_weight[token id]` that fall with corpus frequency (see
    `token_weights`), special tokens and padding weighing 0.
    """

    def __init__(self, dim: int, token_weight: torch.Tensor):
        super().__init__()
        channels = max(1, dim // 4)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, k, padding="same") for k in (3, 4, 5))
        self.decoder = nn.Linear(3 * channels, dim)
        self.register_buffer("token_weight", token_weight.float(), persistent=False)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """hidden, target: [batch, tokens, dim]; input_ids, attention_mask: [batch, tokens] -> scalar."""
        x = hidden.transpose(1, 2)                                        # [batch, dim, tokens]
        code = torch.cat([F.relu(conv(x)) for conv in self.convs], dim=1)  # [batch, 3*channels, tokens]
        rebuilt = self.decoder(code.transpose(1, 2))                      # [batch, tokens, dim]
        per_token = ((rebuilt - target) ** 2).mean(-1)                    # [batch, tokens]
        w = self.token_weight[input_ids] * attention_mask
        return (per_token * w).sum() / w.sum().clamp(min=1e-9)


def token_weights(tokenizer, texts: Iterable[str], max_length: int) -> torch.Tensor:
    """[vocab] weights that fall with a token's frequency: smoothed IDF, log((1 + N) / (1 + n_t)) + 1,
    with N texts and n_t of them containing token t (>= 1 for every token; unseen tokens get the
    largest). Special tokens weigh 0: rebuilding [CLS] or [SEP] teaches nothing."""
    n, total, texts = torch.zeros(len(tokenizer), dtype=torch.float64), 0, iter(texts)
    while chunk := list(islice(texts, 1024)):  # streamed: the texts may not fit in memory together
        for ids in tokenize(tokenizer, chunk, max_length)["input_ids"]:
            n[list(set(ids))] += 1
        total += len(chunk)
    w = torch.log((1 + total) / (1 + n)) + 1
    w[tokenizer.all_special_ids] = 0
    return w.float()
