#!/usr/bin/env python3
"""Writes what tests/test_finetune.cpp imports: a SASRec of tools/bench/sasrec_reference.py (the model a
Python user writes) saved with torch.save(model.state_dict()) and as safetensors (written by hand: no
package needed), the external id of each item row, and the model's scores for a few histories.

    python tests/finetune_reference.py OUT_DIR
writes OUT_DIR/state_dict.pt, model.safetensors, ids.txt, histories.json, scores.json.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "bench"))
from sasrec_reference import SASRec  # noqa: E402

ITEMS, HIDDEN, BLOCKS, HEADS, MAXLEN = 40, 16, 2, 2, 12


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = bytes(t.detach().contiguous().flatten().view(torch.uint8).tolist())
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    out = sys.argv[1]
    torch.manual_seed(3)
    model = SASRec(ITEMS, HIDDEN, BLOCKS, HEADS, 0.0, MAXLEN)
    with torch.no_grad():  # trained-looking norms and biases, not the initial ones and zeros
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        model.item_embedding[0].zero_()
    model.eval()
    torch.save(model.state_dict(), os.path.join(out, "state_dict.pt"))
    write_safetensors(os.path.join(out, "model.safetensors"), model.state_dict())
    with open(os.path.join(out, "ids.txt"), "w") as f:
        f.write("".join(f"movie-{r}\n" for r in range(1, ITEMS + 1)))
    # Histories of row numbers, left-padded with 0, some shorter than MAXLEN.
    g = torch.Generator().manual_seed(5)
    histories = torch.randint(1, ITEMS + 1, (6, MAXLEN), generator=g)
    for r, length in enumerate([12, 7, 3, 1, 12, 9]):
        histories[r, : MAXLEN - length] = 0
    with torch.no_grad():
        scores = model(histories)[:, -1] @ model.item_embedding.t()
    with open(os.path.join(out, "histories.json"), "w") as f:
        json.dump(histories.tolist(), f)
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(scores.tolist(), f)


if __name__ == "__main__":
    main()
