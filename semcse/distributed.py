"""Several processes (torchrun): each embeds a contiguous shard of a batch's pairs, negatives come from
all shards (gathered), and each parameter's gradient is summed over the processes. One process:
every function here is the identity, so training code calls them unconditionally."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist



def join_processes(device: torch.device) -> tuple[torch.device, int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs;
    each process then uses its own GPU. Returns (device, world size, rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world, rank = world_and_rank()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device, world, rank


def shard(batch: list, world: int, rank: int) -> tuple[list, list[int]]:
    """This process's contiguous share of the batch's pairs, and the share sizes of all processes."""
    sizes = [len(ix) for ix in np.array_split(np.arange(len(batch)), world)]
    start = sum(sizes[:rank])
    return batch[start:start + sizes[rank]], sizes


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Each process's .grad holds the part of the gradient flowing through its own embeddings: add them up."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)


def world_and_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_pairs(local: torch.Tensor, sizes: list[int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """local [2m, dim] = this process's [a; b]; returns global a, b [n, dim] in batch order. Only this
    process's rows carry grad (the others' gradients are computed, and summed in, by their owners)."""
    world = len(sizes)
    if world == 1:
        m = len(local) // 2
        return local[:m], local[m:]
    padded = local.new_zeros(2 * max(sizes), local.shape[1])  # all_gather needs equal shapes
    padded[:len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts[rank] = local
    a = torch.cat([p[:m] for p, m in zip(parts, sizes)])
    b = torch.cat([p[m:2 * m] for p, m in zip(parts, sizes)])
    return a, b
