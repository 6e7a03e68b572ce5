"""The settings of one training run, shared by the pipeline, the reference loop and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from ppc.errors import RunError

SPLIT_METHODS = ("cost", "layers", "params")
"""The named split methods (ppc.frontend.split.SPLIT_METHODS; not imported: no torch here)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    model: str = "tiny-llama"
    """Preset name or local Hugging Face directory."""
    allow_missing_keys: bool = False
    """Train even when the directory's weights lack some parameters (those start random)."""
    allow_unexpected_keys: bool = False
    """Train even when the directory's weights hold tensors the model does not have."""
    schedule: str = "1f1b"
    """Built-in schedule name, .ppc file or torch compute-only .csv file."""
    ranks: int = 4
    """Pipeline ranks R; the world size must equal dp * R."""
    dp: int = 1
    """Pipeline replicas D (the mesh's "dp" dimension, exec/mesh.py): each trains on its own
    shard of the global batch (microbatches x microbatch_size x dp sequences per step) and
    the replicas average their gradients (exec/dp.py)."""
    zero: int = 0
    """ZeRO stage: 0 (every replica keeps the whole optimizer state) or 1 (AdamW state
    sharded over the dp group)."""
    virtual: int | None = None
    """Stages per rank V (S = R * V); None: the schedule's own (`virtual N`), else 1."""
    placement: str | None = None
    """None: the schedule's own placement; "loop" or "v" overrides it."""
    split: str = "cost"
    """How the model is cut into stages: "cost", "layers", "params", or the blocks of each
    stage as comma-separated counts ("3,2,2,1": one per stage, summing to the model's blocks)."""
    microbatches: int = 8
    microbatch_size: int = 1
    seq_len: int = 64
    steps: int = 20
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup: int = 2
    weight_decay: float = 0.1
    clip: float | None = 1.0
    """Max global gradient norm; None or 0 disables clipping."""
    seed: int = 0
    data: str | None = None
    """.txt, .jsonl, .parquet or .arrow file, or a Hugging Face datasets directory
    (exec/data_sources.py); None = the embedded Python documentation corpus."""
    data_column: str = "text"
    """The field (.jsonl) or column (.parquet, .arrow, datasets) that holds the text."""
    data_cache: str | None = None
    """Folder of the token cache (exec/token_cache.py); None: $PPC_CACHE, else ~/.cache/ppc."""
    tokenizer: str | None = None
    """Local Hugging Face tokenizer directory; None = bytes (vocab 256)."""
    device: str = "cpu"
    dtype: str = "fp32"
    """"fp32" or "bf16" (autocast; weights and optimizer stay fp32)."""
    metrics: str | None = None
    save: str | None = None
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: str | None = None
    trace: str | None = None
    timeout: float = 300.0
    """Seconds a collective or point-to-point op may wait before the run fails."""
    allow_nonfinite: bool = False
    """Train on through a nan/inf loss or gradient norm (default: stop, naming step and rank)."""

    def __post_init__(self) -> None:
        for name in ("ranks", "dp", "virtual", "microbatches", "microbatch_size", "seq_len", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RunError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in ("fp32", "bf16"):
            raise RunError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.zero not in (0, 1):
            raise RunError(f"--zero must be 0 or 1, got {self.zero}")
        if self.warmup < 0:
            raise RunError(f"--warmup must be >= 0, got {self.warmup}")
        parse_split(self.split)

    @property
    def split_by(self) -> str | tuple[int, ...]:
        """`split` as `ppc.frontend.split` takes it: a method name or blocks per stage."""
        return parse_split(self.split)

    @property
    def sequences_per_step(self) -> int:
        """The global batch: every replica's microbatches."""
        return self.microbatches * self.microbatch_size * self.dp

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len


def parse_split(text: str) -> str | tuple[int, ...]:
    """`--split`: a method in SPLIT_METHODS, or comma-separated blocks per stage (each >= 1,
    except that the first and last stage may have 0)."""
    if text in SPLIT_METHODS:
        return text
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise RunError(
            f"--split must be one of {', '.join(SPLIT_METHODS)} or blocks per stage such as 3,2,2,1; got {text!r}"
        ) from None
    if min(sizes) < 0 or min(sizes[1:-1], default=1) < 1:
        raise RunError(f"--split {text}: every stage needs at least 1 block (the first and last may have 0)")
    return sizes
