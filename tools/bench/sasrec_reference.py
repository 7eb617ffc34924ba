#!/usr/bin/env python3
"""The baseline of `freshrec bench train`: the same SASRec and training step in PyTorch eager, the way a
user would write it in Python. Same architecture as models/sasrec.cpp (pre-norm blocks, fused
scaled_dot_product_attention, GELU feed-forward, shared item table for input and output), same loss
(full-softmax cross-entropy over every item at every position, or sampled softmax with shared
negatives), Adam, gradient clipping at 1.0. Prints one JSON line with the measured step time.

    python tools/bench/sasrec_reference.py --device cpu --items 3416 --hidden 64 --blocks 2 --heads 1 \
        --batch 128 --length 200 --steps 10 --precision fp32

--mode stream measures the test-then-train step of `freshrec stream` instead: for a micro-batch of
--batch events (each a history of --length items and the next item), a no-grad forward that ranks
each event's item among all items, then a training step with the loss on the newest position.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, hidden, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attention_norm = torch.nn.LayerNorm(hidden)
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.attention_out = torch.nn.Linear(hidden, hidden)
        self.ffn_norm = torch.nn.LayerNorm(hidden)
        self.ffn_in = torch.nn.Linear(hidden, hidden)
        self.ffn_out = torch.nn.Linear(hidden, hidden)
        self.residual_dropout = torch.nn.Dropout(dropout)

    def forward(self, x, mask):
        B, T, C = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = x + self.residual_dropout(self.attention_out(a.transpose(1, 2).reshape(B, T, C)))
        f = self.ffn_out(F.dropout(F.gelu(self.ffn_in(self.ffn_norm(h))), self.dropout, self.training))
        return h + self.residual_dropout(f)


class SASRec(torch.nn.Module):
    def __init__(self, items, hidden, blocks, heads, dropout, maxlen):
        super().__init__()
        self.hidden, self.maxlen = hidden, maxlen
        self.item_embedding = torch.nn.Parameter(torch.empty(items + 1, hidden))
        self.position_embedding = torch.nn.Parameter(torch.empty(maxlen, hidden))
        self.embedding_dropout = torch.nn.Dropout(dropout)
        self.blocks = torch.nn.ModuleList(Block(hidden, heads, dropout) for _ in range(blocks))
        self.final_norm = torch.nn.LayerNorm(hidden)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                torch.nn.init.xavier_normal_(p)
            elif "norm" not in name:
                torch.nn.init.zeros_(p)

    def forward(self, items):
        T = items.shape[1]
        real = (items != 0).unsqueeze(-1).to(self.item_embedding.dtype)
        x = F.embedding(items, self.item_embedding, padding_idx=0) * math.sqrt(self.hidden)
        x = self.embedding_dropout((x + self.position_embedding[self.maxlen - T:]) * real)
        causal = torch.ones(T, T, dtype=torch.bool, device=items.device).tril()
        itself = torch.eye(T, dtype=torch.bool, device=items.device)
        mask = causal & ((items != 0)[:, None, None, :] | itself)
        for block in self.blocks:
            x = block(x, mask) * real
        return self.final_norm(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=3416)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--loss", choices=["full", "sampled"], default="full")
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--mode", choices=["train", "stream"], default="train")
    a = parser.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    torch.manual_seed(a.seed)
    model = SASRec(a.items, a.hidden, a.blocks, a.heads, a.dropout, a.length).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98),
                                 fused=device.type == "cuda")
    # The same shapes as freshrec's side: full histories of random items, the next item as target.
    items = torch.randint(1, a.items + 1, (a.batch, a.length), device=device)
    targets = torch.randint(1, a.items + 1, (a.batch * a.length,), device=device)
    stream = a.mode == "stream"
    if stream:
        targets = targets[: a.batch]

    def step():
        if stream:  # test: rank each event's item among all items with the model before this step
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                scores = (model(items)[:, -1] @ model.item_embedding.t()).float()
                scores[:, 0] = float("-inf")
                ranks = (scores > scores.gather(1, targets[:, None])).sum(1)
            model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            hidden = model(items)
            hidden = hidden[:, -1] if stream else hidden.reshape(-1, a.hidden)
            if a.loss == "full":
                logits = hidden @ model.item_embedding.t()
                logits[:, 0] = float("-inf")
            else:
                negatives = torch.randint(1, a.items + 1, (a.negatives,), device=device)
                positive = (hidden * model.item_embedding[targets]).sum(1, keepdim=True)
                negative = hidden @ model.item_embedding[negatives].t()
                negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
                logits = torch.cat([positive, negative], 1)
        logits = logits.float()
        labels = targets if a.loss == "full" else torch.zeros_like(targets)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    model.train()
    for _ in range(a.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    begun = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - begun
    print(json.dumps({"implementation": "pytorch-eager", "torch": torch.__version__, "device": str(device),
                      "precision": a.precision, "mode": a.mode, "steps": a.steps,
                      "ms_per_step": 1000 * seconds / a.steps,
                      "events_per_s": a.batch * a.steps / seconds if stream else None,
                      "steps_per_s": a.steps / seconds, "loss": float(loss), "threads": torch.get_num_threads(),
                      "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
