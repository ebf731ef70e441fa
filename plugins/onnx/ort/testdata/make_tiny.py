#!/usr/bin/python3
"""Writes tiny.onnx and tiny_expected.json, the ort package's test model,
and edge.onnx, a model with outputs Run cannot return.

The model is small on purpose (a few KB) but touches what an exported
groundmesh model does: a Gather from an embedding table by int64 token ids,
a float input added to it, MatMul (a Linear and an attention product), a
Softmax, and an int64 output (ArgMax), with the batch and sequence axes
dynamic. tiny_expected.json holds fixed inputs at two shapes and torch's
outputs for them, which the Go tests compare ORT's outputs with.

Run it from this directory with Debian's torch (apt-get install python3-torch):

    /usr/bin/python3 make_tiny.py

It is deterministic (a fixed seed), so running it again rewrites the same
numbers; the .onnx bytes may differ between torch versions.
"""
import json
import math
import os

import torch
from torch import nn

VOCAB, DIM, OPSET = 32, 16, 17
SHAPES = [(2, 3), (1, 7)]  # (batch, sequence) for the expected outputs


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, tokens, x):
        h = self.emb(tokens) + x  # [B, L, D]
        q = self.proj(h)
        att = torch.softmax(q @ h.transpose(1, 2) / math.sqrt(DIM), dim=-1)  # [B, L, L]
        out = att @ h  # [B, L, D]
        return out, torch.argmax(out, dim=-1)  # float32 [B, L, D], int64 [B, L]


class Edge(nn.Module):
    """Outputs Run cannot return (a scalar, a bool tensor) and a scalar input."""

    def forward(self, x, scale):
        y = x * scale  # [B, L]
        return y, y.sum(), y > 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    model = Tiny().eval()

    example = (torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 2, DIM))
    torch.onnx.export(
        model,
        example,
        os.path.join(here, "tiny.onnx"),
        input_names=["tokens", "x"],
        output_names=["out", "pick"],
        dynamic_axes={
            "tokens": {0: "batch", 1: "seq"},
            "x": {0: "batch", 1: "seq"},
            "out": {0: "batch", 1: "seq"},
            "pick": {0: "batch", 1: "seq"},
        },
        opset_version=OPSET,
        do_constant_folding=True,
    )

    torch.onnx.export(
        Edge(),
        (torch.zeros(1, 2), torch.tensor(2.0)),
        os.path.join(here, "edge.onnx"),
        input_names=["x", "scale"],
        output_names=["y", "total", "positive"],
        dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}, "positive": {0: "batch", 1: "seq"}},
        opset_version=OPSET,
    )

    cases = []
    gen = torch.Generator().manual_seed(1)
    for b, l in SHAPES:
        tokens = torch.randint(0, VOCAB, (b, l), generator=gen, dtype=torch.int64)
        x = torch.randn(b, l, DIM, generator=gen)
        with torch.no_grad():
            out, pick = model(tokens, x)
        cases.append({
            "tokens": {"shape": list(tokens.shape), "data": tokens.flatten().tolist()},
            "x": {"shape": list(x.shape), "data": x.flatten().tolist()},
            "out": {"shape": list(out.shape), "data": out.flatten().tolist()},
            "pick": {"shape": list(pick.shape), "data": pick.flatten().tolist()},
        })
    doc = {
        "torch": torch.__version__,
        "opset": OPSET,
        "vocab": VOCAB,
        "dim": DIM,
        "inputs": ["tokens", "x"],
        "outputs": ["out", "pick"],
        "cases": cases,
    }
    with open(os.path.join(here, "tiny_expected.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
