"""The peer for start-up: tiny-llama on torch.distributed.pipelining, as a user writes it.

One process per rank under torchrun; each builds the Hugging Face model, keeps its slice of
the layers (embedding on the first rank, norm and head on the last) and trains with torch's
ScheduleGPipe/Schedule1F1B. Same shape, batch and optimizer as
`ppc run --model tiny-llama --schedule 1f1b`. Prints the time to each step's end, counted
from this process's start, on the last rank. Used by scripts/startup.py.
"""

import argparse
import os
import time

STARTED = time.perf_counter()

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, Schedule1F1B
from transformers import LlamaConfig, LlamaForCausalLM


class Stage(torch.nn.Module):
    def __init__(self, model, layers, first, last):
        super().__init__()
        inner = model.model
        self.embed = inner.embed_tokens if first else None
        self.layers = torch.nn.ModuleList(inner.layers[i] for i in layers)
        self.rotary = inner.rotary_emb
        self.norm, self.head = (inner.norm, model.lm_head) if last else (None, None)

    def forward(self, x):
        h = self.embed(x) if self.embed is not None else x
        positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        rope = self.rotary(h, positions)
        for layer in self.layers:
            out = layer(h, position_embeddings=rope, position_ids=positions)
            h = out[0] if isinstance(out, tuple) else out
        return self.head(self.norm(h)) if self.head is not None else h


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=8, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)
    torch.manual_seed(0)
    per = config.num_hidden_layers // world
    stage_module = Stage(LlamaForCausalLM(config), range(rank * per, (rank + 1) * per), rank == 0, rank == world - 1)
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))

    def loss_fn(logits, labels):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())

    schedule = Schedule1F1B(stage, n_microbatches=args.microbatches, loss_fn=loss_fn)
    optimizer = torch.optim.AdamW(stage_module.parameters(), lr=3e-4)
    for step in range(args.steps):
        tokens = torch.randint(0, config.vocab_size, (args.microbatches, args.seq_len))
        losses = []
        if rank == 0:
            schedule.step(tokens)
        elif rank == world - 1:
            schedule.step(target=tokens, losses=losses)
        else:
            schedule.step()
        optimizer.step()
        optimizer.zero_grad()
        if rank == world - 1:
            loss = torch.stack(losses).mean().item()
            print(f"step {step + 1} loss {loss:.3f} at {time.perf_counter() - STARTED:.2f} s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
