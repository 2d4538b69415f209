"""Run under torchrun: the model-parallel model against the single-process one.

Each rank builds the full model with the same seed, initialises model
parallelism, loads its split of the weights and compares logits (gathered),
loss (vocab-parallel cross entropy) and gradients (merged) with the reference
computed in the same process without model parallelism.  Exit code 0 = equal.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arch import GPT2Model, merge_model_parallel_states, mpu, split_model_parallel_state  # noqa: E402

CONFIG = dict(
    num_layers=2,
    vocab_size=128,
    hidden_size=32,
    num_attention_heads=4,
    embedding_dropout_prob=0.0,
    attention_dropout_prob=0.0,
    output_dropout_prob=0.0,
    max_sequence_length=32,
    max_memory_length=0,
    checkpoint_activations=False,
)


def run(model, ids, pos, labels):
    logits, *_ = model(ids, pos, torch.ones(1, 1, ids.size(1), ids.size(1)).tril_())
    losses = mpu.vocab_parallel_cross_entropy(logits, labels)
    loss = losses.mean()
    loss.backward()
    return logits, loss


def main() -> int:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    torch.manual_seed(0)
    reference = GPT2Model(**CONFIG).double()
    # perturb biases and LayerNorms so every parameter matters
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, 128, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    labels = torch.randint(0, 128, (2, 16))
    ref_logits, ref_loss = run(reference, ids, pos, labels)
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    torch.manual_seed(1)
    init_ref = GPT2Model(**CONFIG)  # a fresh, unparallel initialisation

    mpu.initialize_model_parallel(world)
    rank = mpu.get_model_parallel_rank()
    parallel = GPT2Model(**CONFIG).double()
    parallel.load_state_dict(split_model_parallel_state(reference.state_dict(), world)[rank])
    logits, loss = run(parallel, ids, pos, labels)
    gathered = mpu.gather_from_model_parallel_region(logits.detach())
    ok = True
    ok &= torch.allclose(gathered, ref_logits.detach(), atol=1e-5, rtol=1e-5)
    ok &= torch.allclose(loss.detach(), ref_loss.detach(), atol=1e-5, rtol=1e-5)
    grads = {n: p.grad.contiguous() for n, p in parallel.named_parameters()}
    all_grads = [None] * world
    dist.all_gather_object(all_grads, grads)
    merged = merge_model_parallel_states(all_grads)
    for name, g in ref_grads.items():
        if not torch.allclose(merged[name], g, atol=1e-5, rtol=1e-5):
            print(f"rank {rank}: gradient mismatch in {name}", flush=True)
            ok = False
    # initialisation: every rank draws the master weights and keeps its slice
    torch.manual_seed(1)
    init_par = GPT2Model(**CONFIG)
    expected_init = split_model_parallel_state(init_ref.state_dict(), world)[rank]
    for name, value in init_par.state_dict().items():
        if not torch.equal(value, expected_init[name]):
            print(f"rank {rank}: initial {name} differs from the sliced master weight", flush=True)
            ok = False
    print(
        f"rank {rank}: logits/loss/grads {'equal' if ok else 'DIFFER'} "
        f"(max logit diff {(gathered - ref_logits).abs().max().item():.2e})",
        flush=True,
    )
    flag = torch.tensor([0 if ok else 1])
    dist.all_reduce(flag)
    dist.destroy_process_group()
    return int(flag.item() != 0)


if __name__ == "__main__":
    sys.exit(main())
