"""Tiny GPT: a pre-norm causal transformer language model on a corpus that needs no download.

The model reads top to bottom like nanoGPT's: token and learned position embeddings, ``depth``
blocks of (LayerNorm → causal self-attention → residual, LayerNorm → GELU MLP → residual), a
final LayerNorm and an untied output head. Linear layers inside blocks carry no bias.

Matrix parameters (for spectral optimizers) are the query, key, value, attention-output and
both MLP weights of every block. Embeddings, the head and the LayerNorm gains and biases go to
AdamW (Muon convention). Validation loss is in nats per token; for byte-level corpora
``val_bpb`` is the same loss in bits per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator

from approximant.engine.errors import check_name
from approximant.engine.files import display_path, files_dir, resolve_data_file, unset_message
from approximant.engine.workloads.base import Task, Workload, WorkloadSettings
from approximant.engine.workloads.corpus import (
    _WHERE,
    Corpus,
    bin_corpus,
    byte_corpus,
    stdlib_bytes,
    user_text_bytes,
)


class TinyGPTSettings(WorkloadSettings):
    corpus: Literal["stdlib", "text", "bin"] = Field(
        "stdlib", description="stdlib: Python's own .py files; text: corpus_path; bin: uint16"
    )
    corpus_bytes: int = Field(
        1_000_000, ge=1_000, le=2**34, description="bytes read from a stdlib or text corpus"
    )
    vocab_size: int = Field(
        50_304, ge=2, le=65_536, description="vocabulary of a bin corpus (text is bytes: 256)"
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="tail of a text corpus for val")
    depth: int = Field(2, ge=1, le=64, description="transformer blocks")
    width: int = Field(64, ge=8, le=8_192, description="model width (embedding dimension)")
    heads: int = Field(4, ge=1, le=128, validate_default=True, description="must divide width")
    mlp_ratio: int = Field(4, ge=1, le=16, description="MLP hidden width / width")
    context: int = Field(64, ge=2, le=16_384, description="sequence length in tokens")
    batch_size: int = Field(16, ge=1, le=4_096, description="sequences per step")
    eval_batches: int = Field(4, ge=1, le=1_000, description="validation batches per eval")
    diagnostics_batch: int = Field(
        64, ge=1, le=100_000, description="sequences in the fixed batch that estimates G"
    )
    corpus_path: str = Field(
        "", validate_default=True, max_length=4096,
        description="text file or folder; folder of train/val.bin (inside the operator's "
        "data folder, APPROXIMANT_FILES_DIR)",
    )

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, v: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width is not None and width % v:
            raise ValueError(f"must divide width ({width}) (got {v})")
        return v

    @field_validator("corpus_path")
    @classmethod
    def _path_when_needed(cls, v: str, info: ValidationInfo) -> str:
        check_name(v)
        corpus = info.data.get("corpus")
        if corpus in ("text", "bin"):
            if files_dir() is None:
                # Before "required": with reading off, asking for a path would mislead.
                raise ValueError(unset_message())
            if not v.strip():
                raise ValueError(f"required when corpus is {corpus!r}: a path inside the data "
                                 "folder")
            # The path is kept as written (the study id hashes it, and a worker resolves it
            # against its own data folder); here it only has to stay inside this host's.
            resolve_data_file(v)
        return v


class Block(torch.nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(width)
        self.q = torch.nn.Linear(width, width, bias=False)
        self.k = torch.nn.Linear(width, width, bias=False)
        self.v = torch.nn.Linear(width, width, bias=False)
        self.proj = torch.nn.Linear(width, width, bias=False)
        self.ln2 = torch.nn.LayerNorm(width)
        self.fc = torch.nn.Linear(width, mlp_ratio * width, bias=False)
        self.out = torch.nn.Linear(mlp_ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.ln1(x)

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # (B, H, T, C/H)

        y = F.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True
        )  # (B, H, T, C/H)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, H, T, C/H) -> (B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(torch.nn.Module):
    def __init__(
        self, vocab: int, context: int, width: int, depth: int, heads: int, mlp_ratio: int
    ) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, width)
        self.pos = torch.nn.Embedding(context, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        # GPT-2's init: residual-branch outputs shrink with depth so the residual stream's
        # variance does not grow with the number of blocks.
        residual_std = 0.02 / math.sqrt(2 * depth)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith(("proj.weight", "out.weight"))
                torch.nn.init.normal_(p, 0.0, residual_std if residual else 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)

    def matrix_params(self) -> list[torch.nn.Parameter]:
        return [
            lin.weight for blk in self.blocks
            for lin in (blk.q, blk.k, blk.v, blk.proj, blk.fc, blk.out)
        ]


def windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> torch.Tensor:
    """Stack ``tokens[s : s + context + 1]`` for each start: (len(starts), context + 1) int64."""
    rows = np.stack([np.asarray(tokens[s : s + context + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())  # (B·T, vocab)


@dataclass
class TinyGPTTask(Task):
    corpus: Corpus = field(default=None)  # type: ignore[assignment]
    context: int = 0
    batch_size: int = 0
    vocab_size: int = 0
    device: torch.device = field(default=None)  # type: ignore[assignment]
    val_batches: list[torch.Tensor] = field(default_factory=list)
    diag_batch: torch.Tensor = field(default=None)  # type: ignore[assignment]
    generator: torch.Generator = field(default=None)  # type: ignore[assignment]

    def _checked(self, batch: torch.Tensor) -> torch.Tensor:
        # Checked on the CPU before the copy: an out-of-range id on CUDA is a device assert
        # that kills the process instead of a readable error.
        top = int(batch.max())
        if top >= self.vocab_size:
            raise ValueError(
                f"workload.settings.vocab_size: token id {top} in the corpus is not below "
                f"vocab_size ({self.vocab_size})"
            )
        return batch.to(self.device, non_blocking=True)

    def train_loss(self, step: int) -> torch.Tensor:
        hi = len(self.corpus.train) - self.context - 1
        starts = torch.randint(0, hi + 1, (self.batch_size,), generator=self.generator).numpy()
        return lm_loss(self.model, self._checked(windows(self.corpus.train, starts, self.context)))

    def full_loss(self) -> torch.Tensor:
        return lm_loss(self.model, self.diag_batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        loss = sum(lm_loss(self.model, b).item() for b in self.val_batches) / len(self.val_batches)
        self.model.train(was_training)
        out = {"val_loss": loss}
        if self.corpus.bytes_per_token:
            out["val_bpb"] = loss / math.log(2) / self.corpus.bytes_per_token
        return out


def load_corpus(s: TinyGPTSettings) -> Corpus:
    if s.corpus == "stdlib":
        return byte_corpus(stdlib_bytes(s.corpus_bytes), s.val_fraction, s.context, "stdlib")
    # Resolved again here, against this worker's data folder: settings validated elsewhere
    # (a dashboard on another host, a spec stored before the folder changed) prove nothing.
    real = resolve_data_file(s.corpus_path, f"{_WHERE}.corpus_path")
    shown = display_path(real)
    if s.corpus == "text":
        return byte_corpus(user_text_bytes(real, s.corpus_bytes, shown), s.val_fraction,
                           s.context, shown)
    return bin_corpus(real, s.context, shown)


class TinyGPT(Workload):
    name = "tiny_gpt"
    title = "Tiny GPT"
    description = (
        "Pre-norm causal transformer LM; byte-level on Python's own standard library by default, "
        "or a text file/folder, or nanoGPT uint16 .bin files."
    )
    settings = TinyGPTSettings
    target_metric = "val_loss"
    default_steps = 300

    @classmethod
    def build(cls, settings: WorkloadSettings, seed: int, device: torch.device) -> Task:
        cls.check_settings(settings)
        s = settings
        corpus = load_corpus(s)
        vocab = corpus.vocab_size or s.vocab_size
        torch.manual_seed(seed)
        model = GPT(vocab, s.context, s.width, s.depth, s.heads, s.mlp_ratio).to(device)
        # Validation windows are evenly spaced and identical for every seed and optimizer.
        n_val = s.eval_batches * s.batch_size
        val_starts = np.linspace(0, len(corpus.val) - s.context - 1, n_val).astype(np.int64)
        # G's batch comes from its own generator so it never shifts the training batches.
        g_diag = torch.Generator().manual_seed(seed + 7_919)
        hi = len(corpus.train) - s.context - 1
        diag_starts = torch.randint(0, hi + 1, (s.diagnostics_batch,), generator=g_diag).numpy()
        task = TinyGPTTask(
            model=model,
            matrix_params=model.matrix_params(),
            examples_per_step=s.batch_size * s.context,
            info={
                "corpus": corpus.source,
                "corpus_fingerprint": corpus.fingerprint,
                "corpus_train_tokens": int(len(corpus.train)),
                "corpus_val_tokens": int(len(corpus.val)),
            },
            corpus=corpus,
            context=s.context,
            batch_size=s.batch_size,
            vocab_size=vocab,
            device=device,
            generator=torch.Generator().manual_seed(seed),
        )
        val = windows(corpus.val, val_starts, s.context)
        task.val_batches = [task._checked(b) for b in val.split(s.batch_size)]
        task.diag_batch = task._checked(windows(corpus.train, diag_starts, s.context))
        return task
