"""Mix Transformer (SegFormer MiT-B0…B5) encoder and loaders for NVlabs / Hugging Face weights.

Architecture (Xie et al., SegFormer, NeurIPS 2021), written from its description:

- four stages, each starting with an *overlapping patch embedding*: a conv with kernel 7 (stage 1)
  or 3 (stages 2–4), padding k//2 and a configurable stride, followed by LayerNorm;
- transformer blocks with *efficient self-attention*: keys/values come from a sequence that a
  strided conv (kernel = stride = sr ratio) + LayerNorm shrinks spatially;
- *Mix-FFN*: Linear → depthwise 3×3 conv → GELU → Linear, hidden size 4·dim;
- stochastic depth increasing linearly from 0 to ``drop_path`` over all blocks;
- a LayerNorm (eps 1e-6) closing each stage; the encoder returns the four maps B×C_s×H_s×W_s.

Module names follow the NVlabs release (``patch_embed1.proj``, ``block1.0.attn.kv``, ``norm1``…),
so NVlabs ``mit_b*.pth`` files load without renaming; Hugging Face ``nvidia/mit-b*`` files (legacy
names, ``segformer.encoder.block.0.0.attention.self.query``…) and the names of ``transformers`` ≥ 5
(``stages.0.blocks.0.attention.q_proj``…) are mapped by :func:`hf_to_mit`.

LPD uses strides [4, 2, 2, 1]: the cumulative reductions are [4, 8, 16, 16], i.e. stage 4 keeps
stride 16 (a 224 px input gives 56, 28, 14, 14 px maps). SegFormer's usual strides are [4, 2, 2, 2].
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_lpd.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "MIT_PRESETS",
    "LoadReport",
    "MixTransformer",
    "apply_state_dict",
    "hf_to_mit",
    "load_mit_weights",
    "mit",
    "nvlabs_to_mit",
    "read_state_dict",
]

_B_DIMS = [64, 128, 320, 512]
_B_HEADS = [1, 2, 5, 8]

#: Architecture presets: embedding dims, blocks per stage, attention heads per stage.
MIT_PRESETS: dict[str, dict[str, list[int]]] = {
    "mit_tiny": {
        "embed_dims": [16, 32, 64, 128],
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 2, 4],
    },
    "mit_b0": {"embed_dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "num_heads": _B_HEADS},
    "mit_b1": {"embed_dims": _B_DIMS, "depths": [2, 2, 2, 2], "num_heads": _B_HEADS},
    "mit_b2": {"embed_dims": _B_DIMS, "depths": [3, 4, 6, 3], "num_heads": _B_HEADS},
    "mit_b3": {"embed_dims": _B_DIMS, "depths": [3, 4, 18, 3], "num_heads": _B_HEADS},
    "mit_b4": {"embed_dims": _B_DIMS, "depths": [3, 8, 27, 3], "num_heads": _B_HEADS},
    "mit_b5": {"embed_dims": _B_DIMS, "depths": [3, 6, 40, 3], "num_heads": _B_HEADS},
}


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Strided conv with padding k//2 (overlapping patches), flattened to tokens, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a spatially reduced sequence."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # keys then values, as in the NVlabs checkpoints
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        hd = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        src = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, h, w)
            src = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        projected: Tensor = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return projected


class DepthwiseConv(nn.Module):
    """Depthwise 3×3 conv applied to a token sequence laid out on an h×w grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        y: Tensor = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return y.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear → depthwise 3×3 conv → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        out: Tensor = self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))
        return out


class MitBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1 x), then x + ffn(norm2 x), with drop-path."""

    def __init__(
        self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        mixed: Tensor = self.drop_path(self.mlp(self.norm2(x), h, w))
        return x + mixed


class MixTransformer(nn.Module):
    """SegFormer MiT encoder returning the four LayerNorm-ed stage maps ``[B×C_s×H_s×W_s]``.

    ``strides`` are the per-stage patch-embedding strides; ``reductions`` their cumulative product
    (LPD's [4, 2, 2, 1] → [4, 8, 16, 16]: stage 4 has stride 16). Inputs should be at least
    ``reductions[s] · sr_ratios[s]`` px per stage (e.g. ≥ 32 px for the defaults).
    """

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        strides: Sequence[int] = (4, 2, 2, 1),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        in_chans: int = 3,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        lists = {"embed_dims": embed_dims, "depths": depths, "num_heads": num_heads}
        lists |= {"sr_ratios": sr_ratios, "strides": strides, "patch_sizes": patch_sizes}
        for name, values in lists.items():
            if len(values) != 4 or any(int(v) < 1 for v in values):
                raise ValueError(
                    f"MixTransformer: {name} must be 4 positive integers, got {values}"
                )
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"MixTransformer: drop_path must be in [0, 1), got {drop_path}")
        self.out_channels = [int(d) for d in embed_dims]
        self.strides = [int(s) for s in strides]
        self.reductions = [math.prod(self.strides[: i + 1]) for i in range(4)]
        total = sum(depths)
        rates = [drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        prev, start = in_chans, 0
        for s in range(4):
            dim = self.out_channels[s]
            embed = OverlapPatchEmbed(prev, dim, int(patch_sizes[s]), self.strides[s])
            blocks = nn.ModuleList(
                MitBlock(dim, num_heads[s], sr_ratios[s], mlp_ratio, rates[start + j], norm_eps)
                for j in range(depths[s])
            )
            setattr(self, f"patch_embed{s + 1}", embed)
            setattr(self, f"block{s + 1}", blocks)
            setattr(self, f"norm{s + 1}", nn.LayerNorm(dim, eps=norm_eps))
            prev, start = dim, start + depths[s]
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs: list[Tensor] = []
        for s in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{s}")(x)
            for block in getattr(self, f"block{s}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{s}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            outs.append(x)
        return outs


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linears, unit LayerNorms, He-style (fan-out) convs, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        fan_out = kh * kw * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def mit(
    variant: str = "mit_b1",
    strides: Sequence[int] = (4, 2, 2, 1),
    drop_path: float = 0.0,
    **overrides: Any,
) -> MixTransformer:
    """Build a preset (``mit_tiny``, ``mit_b0`` … ``mit_b5``); ``overrides`` go to the class."""
    if variant not in MIT_PRESETS:
        raise ValueError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_PRESETS)}")
    kwargs: dict[str, Any] = {**MIT_PRESETS[variant], "strides": strides, "drop_path": drop_path}
    kwargs.update(overrides)
    return MixTransformer(**kwargs)


# ----------------------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What a loader did: model keys filled, model keys left as they were, file keys unused."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


_WRAPPER_KEYS = ("state_dict", "model", "module", "params")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from ``*.pth``/``*.pt``/``*.bin`` (torch, weights only) or ``*.safetensors``.

    A checkpoint that wraps its weights (``{"state_dict": …}``, ``{"model": …}``) is unwrapped;
    non-tensor entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        elif suffix in {".pth", ".pt", ".bin", ".ckpt"}:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(
                f"{path}: unsupported weights format {suffix!r} (use .pth, .pt, .bin, .safetensors)"
            )
    except CheckpointError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for corrupt files
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None or any(isinstance(v, Tensor) for v in obj.values()):
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: weights file holds {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{path}: weights file holds no tensors")
    return state


def apply_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], source: str = "weights"
) -> LoadReport:
    """Copy the tensors of ``state`` whose names exist in ``model``; log what is missing or unused.

    Raises :class:`CheckpointError` when no name matches or a matching tensor has another shape.
    """
    own = model.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(
            f"{source}: no tensor name matches the model (file has e.g. {list(state)[:3]}, "
            f"model expects e.g. {list(own)[:3]})"
        )
    bad = [k for k in matched if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) disagree in shape, e.g. {k}: file "
            f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    report = LoadReport(
        loaded=matched,
        missing=[k for k in own if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in own],
    )
    log.info("%s: loaded %d tensors", source, len(report.loaded))
    if report.missing:
        log.warning("%s: %d model tensors missing: %s", source, len(report.missing), report.missing)
    if report.unexpected:
        log.warning("%s: %d unused tensors: %s", source, len(report.unexpected), report.unexpected)
    return report


_PREFIXES = ("module.", "segformer.", "backbone.")


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def nvlabs_to_mit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """NVlabs/mmseg names are ours: strip ``module.``/``backbone.`` prefixes, drop ``head.*``."""
    return {k: v for k, v in _strip_prefixes(state).items() if not k.startswith("head.")}


# (pattern, replacement) on HF names; stage/block indices become 1-based NVlabs indices below.
_HF_STAGE = [
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", "patch_embed{s}.proj."),
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.", "patch_embed{s}.norm."),
    (r"^encoder\.layer_norm\.(\d+)\.", "norm{s}."),
    (r"^stages\.(\d+)\.patch_embeddings\.proj\.", "patch_embed{s}.proj."),
    (r"^stages\.(\d+)\.patch_embeddings\.layer_norm\.", "patch_embed{s}.norm."),
    (r"^stages\.(\d+)\.layer_norm\.", "norm{s}."),
]
_HF_BLOCK = re.compile(r"^(?:encoder\.block|stages)\.(\d+)\.(?:blocks\.)?(\d+)\.(.+)$")
_HF_BLOCK_PARTS = [
    ("layer_norm_1.", "norm1."),
    ("layernorm_before.", "norm1."),
    ("layer_norm_2.", "norm2."),
    ("layernorm_after.", "norm2."),
    ("attention.self.query.", "attn.q."),
    ("attention.q_proj.", "attn.q."),
    ("attention.self.key.", "attn.k."),
    ("attention.k_proj.", "attn.k."),
    ("attention.self.value.", "attn.v."),
    ("attention.v_proj.", "attn.v."),
    ("attention.self.sr.", "attn.sr."),
    ("attention.sequence_reduction.sequence_reduction.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."),
    ("attention.sequence_reduction.layer_norm.", "attn.norm."),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.dense2.", "mlp.fc2."),
    ("mlp.fc2.", "mlp.fc2."),
]


def _hf_name(key: str) -> str | None:
    for pattern, repl in _HF_STAGE:
        m = re.match(pattern, key)
        if m:
            return repl.format(s=int(m.group(1)) + 1) + key[m.end() :]
    m = _HF_BLOCK.match(key)
    if m:
        stage, block, rest = int(m.group(1)) + 1, int(m.group(2)), m.group(3)
        for old, new in _HF_BLOCK_PARTS:
            if rest.startswith(old):
                return f"block{stage}.{block}.{new}{rest[len(old) :]}"
    return None


def hf_to_mit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map Hugging Face SegFormer names (hub files or ``transformers`` ≥ 5) onto ours.

    Separate key/value projections are concatenated into the fused ``attn.kv``; names that are not
    part of the encoder (``classifier.*``, ``decode_head.*``) are kept under their own name and
    therefore reported as unused.
    """
    out: dict[str, Tensor] = {}
    for key, value in _strip_prefixes(state).items():
        out[_hf_name(key) or key] = value
    for key in [k for k in out if ".attn.k." in k]:
        vkey = key.replace(".attn.k.", ".attn.v.")
        if vkey in out:
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(key), out.pop(vkey)], 0)
    return out


def _looks_hf(state: Mapping[str, Tensor]) -> bool:
    return any("patch_embeddings" in k or ".attention." in k for k in state)


def load_mit_weights(model: MixTransformer, path: str | Path, source: str = "auto") -> LoadReport:
    """Load NVlabs (``mit_b*.pth``) or Hugging Face (``nvidia/mit-b*``) weights from a local file.

    ``source``: ``"auto"`` (detect from the names), ``"nvlabs"`` or ``"hf"``. Missing/unused tensors
    are logged; :class:`CheckpointError` when nothing matches or shapes disagree.
    """
    if source not in {"auto", "nvlabs", "hf"}:
        raise CheckpointError(f"{path}: unknown weights source {source!r} (auto, nvlabs, hf)")
    state = read_state_dict(path)
    if source == "hf" or (source == "auto" and _looks_hf(state)):
        mapped = hf_to_mit(state)
    else:
        mapped = nvlabs_to_mit(state)
    return apply_state_dict(model, mapped, source=str(path))
