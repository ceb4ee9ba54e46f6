"""A small byte-level GPT and its corpus: the Python standard library's own source files.

Nothing is downloaded: the corpus is the ``*.py`` files of the interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, test suites and ``site-packages`` left out), read in sorted
order and concatenated as bytes up to ``corpus_bytes``; the last ``val_fraction`` of it is the
held-out validation split.  A sample is ``block + 1`` consecutive bytes (inputs and next-byte
targets); samples do not overlap, so a data-epoch sees every byte once.

Every worker must build the same corpus, i.e. run the same Python version (the same image); the
corpus digest (:attr:`Corpus.digest`) is printed at the start so that a mismatch shows.

The model is nanoGPT's shape without dropout (dropout would make a step depend on how the batch is
split): token and position embeddings, ``n_layer`` pre-norm blocks (causal self-attention, a 4x
GELU MLP), a final layer norm and an untied head over the 256 byte values.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256  # bytes
EXCLUDED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"})


@dataclass(frozen=True)
class GPTConfig:
    block: int = 64  # context length in bytes
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96


def stdlib_files(root: str | None = None) -> list[Path]:
    """The standard library's ``*.py`` files, sorted by relative path (tests and third parties left out)."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    out = [p for p in base.rglob("*.py") if not EXCLUDED_DIRS & set(p.relative_to(base).parts[:-1])]
    return sorted(out, key=lambda p: p.relative_to(base).as_posix())


class Corpus:
    """The concatenated source bytes, cut into a training and a validation part."""

    def __init__(self, corpus_bytes: int = 4_000_000, val_fraction: float = 0.1, root: str | None = None):
        chunks: list[bytes] = []
        size = 0
        for p in stdlib_files(root):
            data = p.read_bytes()
            chunks.append(data)
            size += len(data)
            if size >= corpus_bytes:
                break
        raw = b"".join(chunks)[:corpus_bytes]
        if len(raw) < 10_000:
            raise RuntimeError(f"the standard library gave only {len(raw)} bytes of source")
        self.digest = hashlib.sha256(raw).hexdigest()[:16]
        tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.long)
        cut = int(len(tokens) * (1.0 - val_fraction))
        self.train, self.val = tokens[:cut], tokens[cut:]


class ByteBlocks:
    """Map-style dataset: sample ``i`` is bytes ``[i*block, (i+1)*block + 1)`` as (input, target)."""

    def __init__(self, data: torch.Tensor, block: int) -> None:
        self.data, self.block = data, block
        self.n = (len(data) - 1) // block

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not indices:
            empty = torch.empty(0, self.block, dtype=torch.long)
            return empty, empty
        starts = torch.as_tensor(indices, dtype=torch.long) * self.block
        rows = starts[:, None] + torch.arange(self.block + 1)
        chunk = self.data[rows]
        return chunk[:, :-1], chunk[:, 1:]


def collate(items: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For a DataLoader over :class:`ByteBlocks` (``__getitems__`` already returns the batch)."""
    return items


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.ln1 = nn.LayerNorm(c.n_embd)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.ln2 = nn.LayerNorm(c.n_embd)
        self.fc = nn.Linear(c.n_embd, 4 * c.n_embd)
        self.out = nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        y: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return y


class GPT(nn.Module):
    def __init__(self, c: GPTConfig, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = c
        self.tok = nn.Embedding(VOCAB, c.n_embd)
        self.pos = nn.Embedding(c.block, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, VOCAB, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                )
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-byte cross-entropy over the batch (every sample has the same number of targets)."""
    device = next(model.parameters()).device
    x, y = batch[0].to(device), batch[1].to(device)
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups: weight decay on matrices, none on biases, norms and embeddings."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith(("tok.", "pos.")) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def threads_from_env() -> None:
    """One compute thread unless OMP_NUM_THREADS says otherwise (several workers share a CPU)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
