#!/usr/bin/python3
"""Train the subprune test models on Fashion-MNIST and export them to ONNX.

Development tool only: the subprune product never needs Python or torch.

Usage (from the repository root):
    /usr/bin/python3 models/train.py                 # data + all five models
    /usr/bin/python3 models/train.py lenet           # data + one model (lenet, vgg, resnet20, mobilenet, vit)
    /usr/bin/python3 models/train.py data            # only calib.npy / test.npy / test-labels.npy
    /usr/bin/python3 models/train.py --bench vgg     # time a few training steps, write nothing

Needs Debian packages python3-torch, python3-onnx, python3-numpy, dataset-fashion-mnist; mobilenet and vit were
trained with libopenblas0-serial installed as the BLAS (Debian's default reference BLAS runs the ViT's matrix
products about 10x slower; the exact numbers of a re-run depend on the BLAS and the thread count).
Reads the IDX files from /usr/share/datasets/fashion-mnist (override with FASHION_MNIST_DIR).
Everything is seeded and torch runs with deterministic algorithms, single process, CPU.
"""
import argparse
import collections
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
# Trained state_dicts are kept outside the repository (they are not shipped).
CKPT_DIR = os.environ.get("SUBPRUNE_CKPT_DIR", "/tmp/subprune-models-ckpt")
DATA_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
SEED = 0
N_CALIB = 512
N_TEST_BUNDLED = 2000
OPSET = 13
# Models exported at another opset: the ViT at 17, where LayerNorm is one LayerNormalization node.
MODEL_OPSET = {"vit": 17}

# Per-model training recipe. Same seed for everything; see README.md.
# bn: how BatchNorm is exported. "keep" = BatchNormalization nodes in the graph;
# "fold" = folded into the preceding Conv by torch's exporter (`--bn fold`; every
# bundled model keeps its BN nodes).
# threads: torch.set_num_threads while training (results are reproducible for a fixed
# thread count; resnet20 and the later models were trained with 1 thread because the 2-core machine was busy,
# where torch's two OpenMP threads ran several times slower than one).
# channels_last: train in torch's channels-last memory format (about 2x faster for the depthwise convolutions
# on CPU); the model is converted back to the default format before it is evaluated and exported.
RECIPES = {
    "lenet":    dict(epochs=10, opt="adam", lr=3e-3, weight_decay=0.0, batch=128, bn="keep", threads=2),
    "vgg":      dict(epochs=6,  opt="adam", lr=2e-3, weight_decay=0.0, batch=128, bn="keep", threads=2),
    "resnet20": dict(epochs=5,  opt="adam", lr=2e-3, weight_decay=0.0, batch=128, bn="keep", threads=1),
    "mobilenet": dict(epochs=5, opt="adam", lr=2e-3, weight_decay=0.0, batch=128, bn="keep", threads=1,
                      channels_last=True),
    "vit":      dict(epochs=15, opt="adamw", lr=2e-3, weight_decay=0.05, batch=128, bn="keep", threads=1),
}


# ----------------------------------------------------------------------------- data

def _open(name):
    path = os.path.join(DATA_DIR, name)
    if os.path.exists(path):
        return open(path, "rb")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    raise FileNotFoundError(path + "[.gz]")


def read_idx(name):
    """Minimal IDX reader (unsigned byte data only, as used by (Fashion-)MNIST)."""
    with _open(name) as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{name}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{name}: size mismatch")
    return data.reshape(dims)


def normalise(u8):
    """uint8 [N,28,28] -> float32 [N,1,28,28]: x/255, then (x - MEAN) / STD (in float32)."""
    x = u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x[:, None, :, :], dtype=np.float32)


def load_data():
    xtr = normalise(read_idx("train-images-idx3-ubyte"))
    ytr = read_idx("train-labels-idx1-ubyte").astype(np.int64)
    xte = normalise(read_idx("t10k-images-idx3-ubyte"))
    yte = read_idx("t10k-labels-idx1-ubyte").astype(np.int64)
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    return xtr, ytr, xte, yte


def calib_indices():
    rng = np.random.RandomState(SEED)
    return np.sort(rng.choice(60000, size=N_CALIB, replace=False))


def write_npy(name, arr):
    path = os.path.join(HERE, name)
    arr = np.ascontiguousarray(arr)
    assert arr.dtype.byteorder in ("<", "=", "|") and sys.byteorder == "little"
    with open(path + ".tmp", "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)
    os.replace(path + ".tmp", path)
    print(f"wrote {path} {arr.dtype} {arr.shape}")


def write_data(xtr, xte, yte):
    idx = calib_indices()
    write_npy("calib.npy", xtr[idx].astype(np.float32))
    write_npy("test.npy", xte[:N_TEST_BUNDLED].astype(np.float32))
    write_npy("test-labels.npy", yte[:N_TEST_BUNDLED].astype(np.int64))
    np.savetxt(os.path.join(HERE, "calib-indices.txt"), idx, fmt="%d")


# ----------------------------------------------------------------------------- models

class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))   # 6x26x26 -> 6x13x13
        x = self.pool2(F.relu(self.conv2(x)))   # 16x11x11 -> 16x5x5
        x = self.flatten(x)                      # 400
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


VGG_CFG = [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256]


class VGG(nn.Module):
    """conv3x3(pad 1, no bias)+BN+ReLU blocks, 28->14->7->3, global average pool, fc 256->10."""

    def __init__(self, cfg=VGG_CFG):
        super().__init__()
        layers, c = [], 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)       # exports as GlobalAveragePool
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, 10)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:   # option B: 1x1 conv + BN projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels), 1 input channel, 28x28 -> 14 -> 7."""

    def __init__(self, n=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c, width, stride))
                c = width
        self.layer1 = nn.Sequential(*blocks[0:n])
        self.layer2 = nn.Sequential(*blocks[n:2 * n])
        self.layer3 = nn.Sequential(*blocks[2 * n:3 * n])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-and-excitation: global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> hardsigmoid,
    the result (one gate per channel) multiplies the block's channels."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)       # exports as GlobalAveragePool
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(self.pool(x))))
        return x * F.hardsigmoid(s)


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand conv+BN+HardSwish, depthwise 3x3 conv+BN+HardSwish, squeeze-and-excitation,
    1x1 project conv+BN (linear bottleneck), residual Add when stride is 1 and cin == cout."""

    def __init__(self, cin, exp, cout, stride):
        super().__init__()
        self.expand = nn.Conv2d(cin, exp, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(exp)
        self.dw = nn.Conv2d(exp, exp, 3, stride=stride, padding=1, groups=exp, bias=False)
        self.bn2 = nn.BatchNorm2d(exp)
        self.se = SqueezeExcite(exp, max(8, exp // 4))
        self.project = nn.Conv2d(exp, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = F.hardswish(self.bn1(self.expand(x)))
        y = F.hardswish(self.bn2(self.dw(y)))
        y = self.bn3(self.project(self.se(y)))
        return x + y if self.residual else y


# (expand channels, out channels, stride) per block; the stem halves 28x28 to 14x14, the fourth block to 7x7.
MOBILENET_CFG = [(32, 16, 1), (64, 24, 1), (72, 24, 1), (96, 40, 2), (120, 40, 1), (120, 40, 1), (160, 64, 1),
                 (192, 64, 1)]


class MobileNet(nn.Module):
    """MobileNetV3-style: 3x3 stride-2 stem conv+BN+HardSwish (16 channels), 8 inverted residual blocks with SE,
    1x1 conv to 256 + BN + HardSwish, global average pool, fc 256->10."""

    def __init__(self, cfg=MOBILENET_CFG):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False)
        self.bn_stem = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for exp, cout, stride in cfg:
            blocks.append(InvertedResidual(c, exp, cout, stride))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, 256, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(256)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(256, 10)

    def forward(self, x):
        x = F.hardswish(self.bn_stem(self.stem(x)))
        x = F.hardswish(self.bn_head(self.head(self.blocks(x))))
        return self.classifier(self.flatten(self.pool(x)))


class Attention(nn.Module):
    """Multi-head self-attention written out as HuggingFace's ViT/BERT code does: separate q, k, v Linear layers,
    heads split by a view of the computed shape, scores scaled by 1/sqrt(head_dim), softmax over the keys."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x):
        """[B, T, C] -> [B, heads, T, head_dim]"""
        return x.view(*x.shape[:-1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        B, T = x.shape[:2]
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        y = torch.matmul(scores.softmax(dim=-1), v)            # [B, heads, T, head_dim]
        return self.out(y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x))))."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """Vision transformer for 28x28: 7x7 patches (Conv, stride 7) -> 16 tokens of width 64, a class token, learned
    position embedding, 6 pre-LN blocks (4 heads of 16, MLP 128), final LayerNorm, fc on the class token."""

    def __init__(self, dim=64, depth=6, heads=4, mlp=128, patch=7):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        tokens = (28 // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)               # [B, 16, dim]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.ln(self.blocks(x))
        return self.classifier(x[:, 0])


MODELS = {"lenet": LeNet, "vgg": VGG, "resnet20": ResNet20, "mobilenet": MobileNet, "vit": ViT}


# ----------------------------------------------------------------------------- train / eval

def seed_all(seed=SEED):
    torch.manual_seed(seed)
    np.random.seed(seed)


@torch.no_grad()
def predict(model, x, batch=1000, fmt=torch.contiguous_format):
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(model(torch.from_numpy(x[i:i + batch]).contiguous(memory_format=fmt)))
    return torch.cat(out).numpy()


def accuracy(logits, y):
    return float((logits.argmax(1) == y).mean())


def make_model(name):
    seed_all()
    return MODELS[name]()


def train(name, xtr, ytr, xte, yte, bench=False):
    r = RECIPES[name]
    model = make_model(name)
    fmt = torch.channels_last if r.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"[{name}] params {nparams}  recipe {r}", flush=True)
    if r["opt"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    elif r["opt"] == "adamw":  # decoupled weight decay, on every parameter (weights, biases, norms, embeddings)
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=r["lr"], momentum=0.9, weight_decay=r["weight_decay"], nesterov=True
        )
    steps_per_epoch = (len(xtr) + r["batch"] - 1) // r["batch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], epochs=r["epochs"],
                                                steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    t0 = time.time()
    for epoch in range(r["epochs"]):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        tot, n = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * r["batch"]:(s + 1) * r["batch"]]
            loss = F.cross_entropy(model(xt[idx].contiguous(memory_format=fmt)), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss) * len(idx)
            n += len(idx)
            if bench and s == 20:
                dt = (time.time() - t0) / 21
                print(f"[{name}] {dt*1000:.0f} ms/step -> {dt*steps_per_epoch/60:.1f} min/epoch", flush=True)
                return None
        acc = accuracy(predict(model, xte, fmt=fmt), yte)
        print(f"[{name}] epoch {epoch+1}/{r['epochs']} loss {tot/n:.4f} test acc {acc:.4f} "
              f"({time.time()-t0:.0f}s)", flush=True)
    model.eval()
    return model.to(memory_format=torch.contiguous_format), nparams, time.time() - t0


# ----------------------------------------------------------------------------- export / verify

def export(model, name, bn="keep", opset=OPSET):
    path = os.path.join(HERE, name + ".onnx")
    model.eval()
    assert not any(m.training for m in model.modules())
    dummy = torch.zeros(1, 1, 28, 28)
    # TrainingMode.PRESERVE with the model in eval mode exports inference-mode
    # BatchNormalization nodes (running statistics, one output). TrainingMode.EVAL
    # runs torch's "eval peephole" pass, which folds every BN into the preceding
    # Conv (the Conv gains a bias). For a model without BN both give the same graph.
    torch.onnx.export(
        model, dummy, path + ".tmp",
        export_params=True, opset_version=opset, do_constant_folding=True,
        training=torch.onnx.TrainingMode.PRESERVE if bn == "keep" else torch.onnx.TrainingMode.EVAL,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    undo_initializer_dedup(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def undo_initializer_dedup(path):
    """torch's exporter always de-duplicates initializers with equal values, replacing the
    second one by `Identity(first)`. In ResNet-20, a downsampling block's bn2.bias and its
    shortcut BN's bias are exactly equal (same zero init, same gradient through the Add, so
    the same Adam updates). Give each such tensor back its own initializer and drop the
    Identity, so every parameter of the graph is a plain initializer."""
    import copy
    import onnx
    m = onnx.load(path)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = copy.deepcopy(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
            print(f"replaced {n.name}: {n.input[0]} -> own initializer {n.output[0]}")
        else:
            keep.append(n)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
        onnx.save(m, path)


def graph_summary(path):
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    nodes = [(n.name, n.op_type) for n in m.graph.node]
    return m, dict(sorted(ops.items())), nodes


# A tiny numpy interpreter for the ops these graphs use, so the exported ONNX
# can be checked against torch without onnxruntime (not packaged in Debian 12).
def _np_run(model, x):
    from onnx import numpy_helper
    env = {t.name: numpy_helper.to_array(t).astype(np.float32) if t.data_type == 1 else numpy_helper.to_array(t)
           for t in model.graph.initializer}
    env[model.graph.input[0].name] = x.astype(np.float64)

    def attrs(n):
        import onnx
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def conv(x, w, b, a):
        w = w.astype(np.float64)
        st = a.get("strides", [1, 1]); pd = a.get("pads", [0, 0, 0, 0]); dl = a.get("dilations", [1, 1])
        g = a.get("group", 1)
        assert dl == [1, 1]
        x = np.pad(x, ((0, 0), (0, 0), (pd[0], pd[2]), (pd[1], pd[3])))
        N, C, H, W = x.shape; M, cg, kh, kw = w.shape
        oh = (H - kh) // st[0] + 1; ow = (W - kw) // st[1] + 1
        y = np.zeros((N, M, oh, ow))
        for i in range(kh):
            for j in range(kw):
                patch = x[:, :, i:i + st[0] * oh:st[0], j:j + st[1] * ow:st[1]]
                if g == 1:
                    y += np.einsum("nchw,mc->nmhw", patch, w[:, :, i, j])
                else:  # grouped: group k maps input channels [k*cg, (k+1)*cg) to outputs [k*M/g, (k+1)*M/g)
                    pg = patch.reshape(N, g, cg, oh, ow)
                    wg = w[:, :, i, j].reshape(g, M // g, cg)
                    y += np.einsum("ngchw,gmc->ngmhw", pg, wg).reshape(N, M, oh, ow)
        if b is not None:
            y += b.astype(np.float64)[None, :, None, None]
        return y

    for n in model.graph.node:
        a = attrs(n)
        ins = [env[i] if i else None for i in n.input]
        op = n.op_type
        if op == "Conv":
            y = conv(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a)
        elif op == "BatchNormalization":
            x, s, b, m, v = [t.astype(np.float64) for t in ins]
            sh = (1, -1, 1, 1)
            y = (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + a.get("epsilon", 1e-5)) * s.reshape(sh) + b.reshape(sh)
        elif op == "Identity":
            y = ins[0]
        elif op == "Constant":
            y = numpy_helper.to_array(a["value"])
        elif op == "HardSigmoid":
            y = np.clip(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)
        elif op == "HardSwish":
            y = ins[0] * np.clip(ins[0] / 6 + 0.5, 0, 1)
        elif op == "Sigmoid":
            y = 1 / (1 + np.exp(-ins[0]))
        elif op == "Erf":
            y = np.vectorize(math.erf)(ins[0])
        elif op in ("Mul", "Sub", "Div"):
            y = {"Mul": np.multiply, "Sub": np.subtract, "Div": np.divide}[op](ins[0], ins[1])
            if ins[0].dtype.kind == "i" and ins[1].dtype.kind == "i" and op == "Div":
                y = ins[0] // ins[1]
        elif op == "MatMul":
            y = np.matmul(ins[0].astype(np.float64), ins[1].astype(np.float64))
        elif op == "Softmax":
            e = np.exp(ins[0] - ins[0].max(axis=a.get("axis", -1), keepdims=True))
            y = e / e.sum(axis=a.get("axis", -1), keepdims=True)
        elif op == "LayerNormalization":
            x, ax = ins[0], a.get("axis", -1)
            mu = x.mean(axis=ax, keepdims=True); var = ((x - mu) ** 2).mean(axis=ax, keepdims=True)
            y = (x - mu) / np.sqrt(var + a.get("epsilon", 1e-5)) * ins[1] + (ins[2] if len(ins) > 2 else 0)
        elif op == "Transpose":
            y = np.transpose(ins[0], a.get("perm"))
        elif op == "Shape":
            y = np.array(ins[0].shape, dtype=np.int64)
        elif op == "Gather":
            y = np.take(ins[0], ins[1], axis=a.get("axis", 0))
        elif op == "Unsqueeze":
            y = ins[0]
            for ax in sorted(int(v) % (ins[0].ndim + len(ins[1])) for v in ins[1]):
                y = np.expand_dims(y, ax)
        elif op == "Concat":
            y = np.concatenate(ins, axis=a["axis"])
        elif op == "Slice":
            x, starts, ends = ins[0], ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 else range(len(starts))
            steps = ins[4] if len(ins) > 4 else [1] * len(starts)
            sl = [slice(None)] * x.ndim
            for st, en, ax, sp in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(st), int(min(en, 2 ** 62)), int(sp))
            y = x[tuple(sl)]
        elif op == "ConstantOfShape":
            v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            y = np.full(tuple(ins[0]), v[0], dtype=v.dtype)
        elif op == "Equal":
            y = ins[0] == ins[1]
        elif op == "Where":
            y = np.where(ins[0], ins[1], ins[2])
        elif op == "Expand":
            y = ins[0] * np.ones(tuple(ins[1]), dtype=ins[0].dtype)
        elif op == "Relu":
            y = np.maximum(ins[0], 0)
        elif op == "Add":
            y = ins[0] + ins[1]
        elif op == "MaxPool":
            k = a["kernel_shape"]; st = a.get("strides", k)
            assert k == [2, 2] and st == [2, 2] and not any(a.get("pads", [0]))
            x = ins[0]; N, C, H, W = x.shape; h, w = H // 2, W // 2
            y = x[:, :, :2 * h, :2 * w].reshape(N, C, h, 2, w, 2).max(axis=(3, 5))
        elif op == "GlobalAveragePool":
            y = ins[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Flatten":
            ax = a.get("axis", 1); x = ins[0]
            y = x.reshape(int(np.prod(x.shape[:ax])), -1)
        elif op == "Reshape":
            y = ins[0].reshape([int(d) if d != 0 else ins[0].shape[i] for i, d in enumerate(ins[1])])
        elif op == "Gemm":
            A, B = ins[0], ins[1].astype(np.float64)
            if a.get("transA", 0): A = A.T
            if a.get("transB", 0): B = B.T
            y = a.get("alpha", 1.0) * (A @ B)
            if len(ins) > 2 and ins[2] is not None:
                y = y + a.get("beta", 1.0) * ins[2].astype(np.float64)
        else:
            raise NotImplementedError(op)
        env[n.output[0]] = y
    return env[model.graph.output[0].name]


def verify(model_onnx, torch_model, x):
    ref = predict(torch_model, x).astype(np.float64)
    got = _np_run(model_onnx, x)
    return float(np.abs(got - ref).max()), bool((got.argmax(1) == ref.argmax(1)).all())


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["all"], help="lenet | vgg | resnet20 | mobilenet | vit | data | all")
    ap.add_argument("--bench", action="store_true", help="time a few training steps only")
    ap.add_argument("--threads", type=int, default=None, help="override the recipe's thread count")
    ap.add_argument("--bn", choices=["keep", "fold"], default=None,
                    help="override the model's BatchNorm export mode (see RECIPES)")
    ap.add_argument("--from-checkpoint", action="store_true",
                    help=f"skip training: load the state_dict saved by an earlier run from {CKPT_DIR}")
    args = ap.parse_args()
    which = list(MODELS) if "all" in args.which else args.which
    for w in which:
        if w not in MODELS and w != "data":
            ap.error(f"unknown target {w}")

    torch.set_num_threads(args.threads or 2)
    torch.use_deterministic_algorithms(True)
    seed_all()

    xtr, ytr, xte, yte = load_data()
    if not args.bench:
        write_data(xtr, xte, yte)

    info_path = os.path.join(HERE, "train-results.json")
    results = {}
    if os.path.exists(info_path) and not args.bench:
        with open(info_path) as f:
            results = json.load(f)

    for name in which:
        if name == "data":
            continue
        threads = args.threads or RECIPES[name]["threads"]
        torch.set_num_threads(threads)
        ckpt = os.path.join(CKPT_DIR, name + ".pt")
        if args.from_checkpoint:
            model = make_model(name)
            model.load_state_dict(torch.load(ckpt))
            model.eval()
            nparams = sum(p.numel() for p in model.parameters())
            secs = results.get(name, {}).get("train_seconds", -1)
        else:
            out = train(name, xtr, ytr, xte, yte, bench=args.bench)
            if out is None:
                continue
            model, nparams, secs = out
            os.makedirs(CKPT_DIR, exist_ok=True)
            torch.save(model.state_dict(), ckpt)
        acc10k = accuracy(predict(model, xte), yte)
        acc2k = accuracy(predict(model, xte[:N_TEST_BUNDLED]), yte[:N_TEST_BUNDLED])
        bn = args.bn or RECIPES[name]["bn"]
        opset = MODEL_OPSET.get(name, OPSET)
        path = export(model, name, bn, opset)
        m, ops, nodes = graph_summary(path)
        maxdiff, same = verify(m, model, xte[:N_TEST_BUNDLED])
        res = dict(
            command=f"/usr/bin/python3 models/train.py {name}"
                    + (f" --threads {args.threads}" if args.threads else "")
                    + (f" --bn {args.bn}" if args.bn else ""),
            seed=SEED, **{**RECIPES[name], "bn": bn, "threads": threads},
            schedule="OneCycleLR (cosine), max_lr = lr",
            params=nparams, train_seconds=round(secs),
            test_acc_10k=acc10k, test_acc_2k=acc2k,
            onnx_bytes=os.path.getsize(path), opset=opset, ops=ops,
            conv_gemm_nodes=[nm for nm, op in nodes if op in ("Conv", "Gemm", "MatMul")],
            onnx_vs_torch_max_abs_diff_2k=maxdiff, onnx_vs_torch_argmax_equal_2k=same,
            torch=torch.__version__, onnx=__import__("onnx").__version__, numpy=np.__version__,
        )
        results[name] = res
        print(json.dumps({name: res}, indent=1), flush=True)
        with open(info_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        os.replace(info_path + ".tmp", info_path)


if __name__ == "__main__":
    main()
