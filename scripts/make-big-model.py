# A real model past protobuf's 2 GB limit, exported by torch (Debian's python3-torch 1.13, which writes the weights of a
# model this large as external data, one file per tensor): token ids → Embedding(8 600 000, 64) (2.2 GB) →
# Linear(64, 256) → ReLU → Linear(256, 10). The 256 hidden neurons are the prunable group. Also writes int64
# calibration ids. Usage: /usr/bin/python3 scripts/make-big-model.py DIR (used by scripts/big-model.mjs)
import os
import sys

import numpy as np
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
V, E, H = 8_600_000, 64, 256


class Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, E)
        self.fc1 = torch.nn.Linear(E, H)
        self.fc2 = torch.nn.Linear(H, 10)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.embed(ids))))


m = Big().eval()
ids = torch.randint(0, V, (1024,), generator=torch.Generator().manual_seed(1))
np.save(os.path.join(out, "ids.npy"), ids.numpy().astype(np.int64))
with torch.no_grad():
    torch.onnx.export(
        m,
        (ids[:4],),
        os.path.join(out, "big.onnx"),
        input_names=["ids"],
        output_names=["logits"],
        dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
