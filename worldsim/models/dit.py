"""Action-conditioned spacetime-patch diffusion transformer: the dynamics model.

The network predicts, for each latent frame, the (preconditioned) denoiser output from the
frame's noisy version, the clean past frames and the *incoming* action (the action that led
from the previous frame to this one), plus the reward and episode end of that transition.
It never sees the noise schedule: it takes already-scaled inputs and a noise-level scalar
per frame; :mod:`worldsim.diffusion.edm` owns the preconditioning.

Training runs one pass over a "doubled sequence" of ``2T`` frame slots: ``T`` context slots
(the frames, lightly noised) and ``T`` target slots (the frames at training noise). Context
slot ``t`` attends to context slots ``t - context_frames .. t``; target slot ``t`` attends to
context slots ``t - context_frames .. t - 1`` and to itself. That is exactly what cached
stepping computes: :meth:`DynamicsModel.predict` is a target slot over the cached context and
:meth:`DynamicsModel.commit` a context slot, so training and inference share every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from worldsim.errors import ConfigError
from worldsim.models.patches import (
    RotaryEmbedding3D,
    apply_rope,
    patchify,
    token_positions,
    unpatchify,
)

# Time position of a cache slot that holds no frame; far below any window.
EMPTY_SLOT = -(2**40)


@dataclass
class DynamicsConfig:
    """Shape of the dynamics transformer. With a state dict it fully rebuilds the model."""

    latent_channels: int = 8  # c: channels of the autoencoder's latent grid
    num_actions: int = 3  # A: discrete actions; index A is the extra "unknown action"
    patch_time: int = 1  # pt: frames per patch; must be 1 (frame-causal next-frame prediction)
    patch_height: int = 2  # ph: latent rows per patch
    patch_width: int = 2  # pw: latent columns per patch
    width: int = 192  # D: transformer hidden width
    depth: int = 4  # number of SpaceTimeBlocks
    heads: int = 2  # attention heads; width / heads must be even and >= 6 (3D RoPE)
    mlp_ratio: float = 4.0  # MLP hidden width / D
    context_frames: int = 8  # past frames a frame attends to (cache window, training window)
    rope_theta: float = 100.0  # RoPE base; positions span tens of frames/cells, not 10k words
    noise_features: int = 128  # sinusoidal features of the noise level fed to its MLP
    qk_norm: bool = True  # RMS-normalise queries and keys per head (steadier in bfloat16)
    # the incoming action also enters every token of its frame (beside adaLN), a direct
    # path that a small model learns in a few thousand steps
    action_tokens: bool = False
    action_init_std: float = 1.0  # initial scale of the action embeddings (noise MLP's ~1)
    # every frame's tokens also embed the same patch of the frame before it (the committed,
    # context version): a direct same-place path from the past, as DIAMOND and GameNGen
    # stack past frames on the noisy input's channels; without it the model must find a
    # moved object by attention alone and blurs small ones away
    previous_frame: bool = False
    # a foresight head: from a frame's tokens, the logit per action that the *next* step,
    # taking that action, ends the episode; read before the next frame is drawn, so a dream
    # can end where the model saw the death coming even if its drawn frame lost the cause
    # (add one to a trained model with `worldsim train-foresight`)
    foresight_head: bool = False
    # a hold head (when > 0): from a frame's pooled tokens, the logit per action that
    # holding it for the next HOLD_STEPS steps ends the episode within them: which move
    # survives, read from the real state without drawing a frame (fitted on branch data,
    # `worldsim train-foresight --hold`)
    hold_steps: int = 0
    # the hold head reads every one of the frame's HOLD_TOKENS tokens (each projected, then
    # together) instead of their mean (0): where a fireball is lies in which token sees it,
    # and the mean blurs that away (`worldsim train-foresight --hold --tokens`). The model's
    # state (what hold heads and state agents read) is then those tokens, flattened.
    hold_tokens: int = 0
    # the hold head is this many heads fitted from different seeds on the same states, its
    # risk their mean chance: one head's errors at near ties are partly its own seed's
    # (`worldsim train-foresight --hold --members K`)
    hold_members: int = 1


DYNAMICS_PRESETS: dict[str, DynamicsConfig] = {
    # Tests: seconds on a CPU.
    "tiny": DynamicsConfig(latent_channels=4, width=48, depth=2, heads=2, context_frames=4,
                           noise_features=32, action_tokens=True,
                           previous_frame=True),
    # A 2-core CPU: 16 tokens per 8x8 latent frame, >= 1,000 dream steps/s at batch 64 (bf16).
    "small": DynamicsConfig(width=192, depth=4, heads=2, context_frames=8, action_tokens=True,
                            previous_frame=True),
    # One GPU: wider, deeper, longer memory.
    "base": DynamicsConfig(width=512, depth=12, heads=8, context_frames=16, noise_features=256,
                           action_tokens=True, previous_frame=True),
}


@dataclass
class DynamicsOutput:
    """What one training pass predicts, per frame."""

    prediction: Tensor  # (B, T, c, h, w) raw network output for the target slots
    reward: Tensor  # (B, T) reward of the transition into frame t (context slots)
    termination_logit: Tensor  # (B, T) logit that the transition into frame t ended the episode
    # (B, T, A) logit that the step after frame t, taking action a, ends the episode
    foresight_logits: Tensor | None = None


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: per-frame affine transform of normalised tokens."""
    return x * (1 + scale) + shift


class PatchEmbed(nn.Module):
    """Latent frames -> spacetime-patch tokens of width D; with ``previous_frame`` each token
    also embeds the same patch of the frame before it (its own linear map)."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.patch = (cfg.patch_time, cfg.patch_height, cfg.patch_width)
        values = cfg.latent_channels * math.prod(self.patch)
        self.proj = nn.Linear(values, cfg.width)
        self.previous = nn.Linear(values, cfg.width, bias=False) if cfg.previous_frame else None

    def forward(self, latents: Tensor, previous: Tensor | None = None) -> Tensor:
        """``latents`` (B, T, c, h, w) and, with ``previous_frame``, ``previous`` of the same
        shape: frame t - 1 of each frame t (zeros where there is none)."""
        tokens = self.proj(patchify(latents, self.patch))  # (B, T, N, D)
        if self.previous is not None:
            if previous is None:
                raise ValueError("this model embeds the previous frame: pass `previous`")
            tokens = tokens + self.previous(patchify(previous, self.patch))
        return tokens


class TimestepEmbedder(nn.Module):
    """Noise-level scalar (EDM's c_noise) -> D: sinusoidal features, then an MLP (DiT)."""

    def __init__(self, width: int, features: int) -> None:
        super().__init__()
        # c_noise = ln(sigma) / 4 lies in about [-2, 1]: frequencies from 1 to 100 rad/unit
        # resolve neighbouring sampler levels without aliasing across the range.
        frequencies = torch.logspace(0, 2, features // 2)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, noise_level: Tensor) -> Tensor:
        angles = noise_level.float()[..., None] * self.frequencies  # (B, T, features/2)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, T, features)
        return self.mlp(features)  # (B, T, D)


class ActionEmbedder(nn.Module):
    """Incoming action -> D. Index ``A`` means "unknown": the first frame of a segment, and
    any frame the training objective drops the action of (``EDMObjective.action_dropout``,
    drawn there from the step's random stream so that training stays reproducible)."""

    def __init__(self, num_actions: int, width: int) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.table = nn.Embedding(num_actions + 1, width)

    def forward(self, actions: Tensor) -> Tensor:
        return self.table(actions)  # (B, T, D)


class LayerKV:
    """One layer's view of a :class:`KVCache` during a cached pass: where to write."""

    def __init__(self, keys: Tensor, values: Tensor, rows: Tensor, slots: Tensor) -> None:
        self.keys = keys  # (B, heads, S, N, Dh) ring buffer of S frame slots
        self.values = values  # (B, heads, S, N, Dh)
        self.rows = rows  # (B, 1) batch row of each new frame
        self.slots = slots  # (B, T') buffer slot of each new frame

    def write(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new frames' keys/values (B, heads, T'*N, Dh); return all slots'."""
        frames = self.slots.shape[1]
        pattern = "B heads (T N) Dh -> B T heads N Dh"
        self.keys[self.rows, :, self.slots] = rearrange(keys, pattern, T=frames).to(self.keys.dtype)
        self.values[self.rows, :, self.slots] = rearrange(values, pattern, T=frames).to(
            self.values.dtype
        )
        flat = "B heads S N Dh -> B heads (S N) Dh"  # a view: the buffers are contiguous
        return rearrange(self.keys, flat), rearrange(self.values, flat)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax attention of ``q`` (B, heads, Nq, Dh) over ``k``/``v`` (B, heads, Nk, Dh),
    ``mask`` (broadcastable to (B, heads, Nq, Nk)) True where attending is allowed, or None
    when every query sees every key.

    On CPU an explicit matmul-softmax-matmul: for the cached step's many small per-head
    products it measured 10-15% faster end to end than ``F.scaled_dot_product_attention``'s
    CPU kernel (bfloat16, 2 threads, small preset, batch 64). Elsewhere SDPA (fused kernels).
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, heads, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)  # (B, heads, Nq, Dh)


class QKNorm(nn.Module):
    """RMS norm over a head's channels with a learned gain, computed in float32 and returned
    in the input's dtype (on CPU the fused kernel is about 5x slower for bfloat16 input than
    a float32 round trip, and less exact)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], self.weight.float(), eps=1e-6).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with 3D RoPE; keys/values optionally go through a cache."""

    def __init__(self, width: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        head_dim = width // heads
        self.q_norm = QKNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(head_dim) if qk_norm else nn.Identity()

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, kv: LayerKV | None
    ) -> Tensor:
        qkv = self.qkv(x)  # (B, N, 3*D)
        q, k, v = rearrange(qkv, "B N (three heads Dh) -> three B heads N Dh", three=3,
                            heads=self.heads)  # (B, heads, N, Dh) each
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        if kv is not None:
            k, v = kv.write(k, v)  # (B, heads, S*N, Dh): every cached slot
            q = q.to(k.dtype)
        out = attention(q, k, v, mask)  # (B, heads, N, Dh)
        return self.proj(rearrange(out, "B heads N Dh -> B N (heads Dh)"))  # (B, N, D)


class SpaceTimeBlock(nn.Module):
    """Pre-norm attention + MLP over all tokens of all frames, adaLN-Zero modulated per frame.

    Attention spans space and time at once (the mask decides which frames see which);
    the per-frame conditioning vector (noise level + incoming action) sets shift, scale
    and gate of both branches, gates starting at zero so each block starts as identity.
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg.width, cfg.heads, cfg.qk_norm)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, hidden), nn.GELU(), nn.Linear(hidden, cfg.width)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 6 * cfg.width))

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        kv: LayerKV | None = None,
    ) -> Tensor:
        frames = x.shape[1]
        modulation = rearrange(self.modulation(cond), "B T (six D) -> six B T 1 D", six=6)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation
        h = modulate(self.norm1(x), shift_attn, scale_attn)  # (B, T, N, D)
        h = self.attn(rearrange(h, "B T N D -> B (T N) D"), rope, mask, kv)  # (B, T*N, D)
        x = x + gate_attn * rearrange(h, "B (T N) D -> B T N D", T=frames)  # (B, T, N, D)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)  # (B, T, N, D)
        return x + gate_mlp * self.mlp(h)  # (B, T, N, D)


class FinalLayer(nn.Module):
    """adaLN + linear from tokens back to patch values (DiT)."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        patch_values = cfg.latent_channels * cfg.patch_time * cfg.patch_height * cfg.patch_width
        self.norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.linear = nn.Linear(cfg.width, patch_values)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = rearrange(self.modulation(cond), "B T (two D) -> two B T 1 D", two=2)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, N, c*pt*ph*pw)


class FrameScalarHead(nn.Module):
    """Mean-pool a frame's tokens, then a small MLP to one scalar per frame."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        pooled = reduce(x, "B T N D -> B T D", "mean")  # (B, T, D)
        return rearrange(self.mlp(self.norm(pooled)), "B T 1 -> B T")  # (B, T)


class RewardHead(FrameScalarHead):
    """Reward of the transition into a frame, read from the frame's clean (context) tokens."""


class TerminationHead(FrameScalarHead):
    """Logit that the transition into a frame ended the episode."""


class ForesightHead(nn.Module):
    """Logits ``(.., A)``, one per action, that the step after a frame ends the episode if
    that action is taken: the hazard of the next step, read from the frame's tokens."""

    def __init__(self, width: int, num_actions: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, num_actions))

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, T, N, D)`` -> logits ``(B, T, A)``."""
        return self.read(reduce(x, "B T N D -> B T D", "mean"))

    def read(self, pooled: Tensor) -> Tensor:
        """Mean-pooled tokens ``(..., D)`` -> logits ``(..., A)``."""
        return self.mlp(self.norm(pooled))


class HoldHead(nn.Module):
    """Logits ``(.., A)``, one per action, that holding it for the next ``steps`` steps ends
    the episode within them, read from a frame's mean-pooled tokens ``(..., D)``, or with
    ``tokens`` > 0 from all its ``tokens`` tokens flattened ``(..., tokens * D)`` (each token
    projected to ``projection`` features by the same layer, then all of them together, so
    the head knows which token saw what). Its input is standardised by the fitted states'
    own mean and spread, kept as buffers. With ``members`` > 1 it is that many such MLPs on
    the same input (``mlp`` a ``ModuleList``), its logit that of their mean chance."""

    def __init__(self, width: int, num_actions: int, hidden: int = 256,
                 dropout: float = 0.2, tokens: int = 0, projection: int = 32,
                 members: int = 1) -> None:
        super().__init__()
        size = width * max(tokens, 1)
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

        def mlp() -> nn.Sequential:
            if tokens:  # measured: benchmarks/results/takecover-hold-head-tokens-2026-12-03.json
                return nn.Sequential(nn.Unflatten(-1, (tokens, width)),
                                     nn.Linear(width, projection), nn.SiLU(), nn.Flatten(-2),
                                     nn.Linear(tokens * projection, hidden), nn.SiLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, num_actions))
            return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_actions))

        self.mlp: nn.Module = mlp() if members == 1 else nn.ModuleList(
            mlp() for _ in range(members))

    @property
    def members(self) -> list[nn.Module]:
        """The head's MLPs (one unless it is an ensemble)."""
        return list(self.mlp) if isinstance(self.mlp, nn.ModuleList) else [self.mlp]

    def standardise(self, state: Tensor) -> Tensor:
        """The model's state ``(..., S)`` -> the head's standardised input ``(..., S)``."""
        return (state.float() - self.mean) / self.std

    def read(self, state: Tensor) -> Tensor:
        """The model's state ``(..., S)`` (pooled or flattened tokens) -> logits ``(..., A)``."""
        inputs = self.standardise(state)
        if not isinstance(self.mlp, nn.ModuleList):
            return self.mlp(inputs)
        logits = torch.stack([member(inputs) for member in self.mlp])
        # log(mean p) - log(mean (1 - p)), the members' mean chance as a logit (the
        # log-sigmoids keep it finite where a member is sure)
        return (torch.logsumexp(F.logsigmoid(logits), 0)
                - torch.logsumexp(F.logsigmoid(-logits), 0))


class KVCache:
    """Keys and values of committed frames for cached stepping, batch-first.

    A ring buffer of ``context_frames + 1`` frame slots per layer and per batch row. Frame
    ``p`` of a row lives in slot ``p mod S``; the one slot beyond the window is scratch for
    the frame being denoised (it holds frame ``p - S``, already outside the window). Every
    row keeps its own time positions, so rows may hold different numbers of frames and may
    be restarted independently (:meth:`DynamicsModel.restart_rows`). Keys are stored
    already rotated by RoPE; when a row's positions reach ``rebase_at`` its keys are rotated
    back by a multiple of ``S`` so positions stay small in long rollouts (attention depends
    only on position differences, so outputs do not change).
    """

    def __init__(
        self,
        keys: list[Tensor],
        values: list[Tensor],
        slot_positions: Tensor,
        next_position: Tensor,
        grid: tuple[int, int],
        latent_shape: tuple[int, int, int],
        window: int,
        rebase_at: int,
        last_frame: Tensor,
    ) -> None:
        self.keys = keys  # per layer (B, heads, S, N, Dh)
        self.values = values  # per layer (B, heads, S, N, Dh)
        self.slot_positions = slot_positions  # (B, S) time position held by each slot
        self.next_position = next_position  # (B,) time position of the next frame
        self.grid = grid  # patch grid (rows, columns) of one frame
        self.latent_shape = latent_shape  # (c, h, w) of one latent frame
        self.window = window  # committed frames a new frame attends to
        self.rebase_at = rebase_at  # positions are shifted down once they reach this
        self.version = 0  # bumped whenever positions change (see DynamicsModel._cached_pass)
        self.plan: tuple[Any, ...] | None = None  # slots, mask and RoPE of the next frame(s)
        self.last_frame = last_frame  # (B, c, h, w) last committed (model-input) frame
        # (B, D) the model's state after the last committed frame: the mean of its
        # last-layer tokens, which the heads read (float32)
        self.state: Tensor | None = None
        # (B, A) the foresight head's logits read from that state (None without the head)
        self.foresight_logits: Tensor | None = None

    def advance(self, frames: int) -> None:
        """Count ``frames`` new frames as committed in every row."""
        self.next_position += frames
        self.version += 1

    @property
    def batch_size(self) -> int:
        return self.slot_positions.shape[0]

    @property
    def slots(self) -> int:
        return self.slot_positions.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def claim_slots(self, positions: Tensor) -> list[LayerKV]:
        """Mark the slots of frames at ``positions`` (B, T') as theirs; one view per layer."""
        slots = positions % self.slots  # (B, T')
        rows = torch.arange(self.batch_size, device=positions.device)[:, None]  # (B, 1)
        self.slot_positions[rows, slots] = positions
        return [LayerKV(k, v, rows, slots) for k, v in zip(self.keys, self.values)]

    def attention_mask(self, positions: Tensor) -> Tensor | None:
        """(B, 1, T'*N, S*N) bool: a frame at ``p`` sees slots holding ``p - window .. p``;
        None when every frame sees every slot (the usual case once the window is full: the
        ring has one slot per frame of the window plus the new frame's), so attention can
        skip the mask."""
        held = self.slot_positions[:, None, :]  # (B, 1, S)
        query = positions[:, :, None]  # (B, T', 1)
        visible = (held <= query) & (held >= query - self.window)  # (B, T', S)
        if bool(visible.all()):
            return None
        n = self.tokens_per_frame
        return repeat(visible, "B T S -> B 1 (T Nq) (S Nk)", Nq=n, Nk=n)

    def rebase(self, rope: RotaryEmbedding3D) -> None:
        """Shift rows whose positions reached ``rebase_at`` down by a multiple of ``S``."""
        rows = self.next_position >= self.rebase_at
        if not bool(rows.any()):
            return
        offset = (self.next_position[rows] - self.window) // self.slots * self.slots  # (R,)
        shift = torch.zeros(offset.shape[0], 3, dtype=torch.float64, device=offset.device)
        shift[:, 0] = -offset.double()
        cos, sin = rope(rearrange(shift, "B three -> B 1 1 1 three"))  # (R, 1, 1, 1, Dh)
        for keys in self.keys:
            keys[rows] = apply_rope(keys[rows], cos, sin)
        self.slot_positions[rows] -= offset[:, None]
        self.next_position[rows] -= offset
        self.version += 1

    def rows(self, index: slice | Tensor) -> KVCache:
        """Rows ``index`` of this cache: views for a slice (the frames a pass writes into
        them, keys, values, slots and positions, land here; the fields a commit replaces,
        last frame, state and foresight logits, are copied back by :meth:`keep_span`), a new
        cache for a ``(B',)`` long index (rows in that order)."""
        taken = KVCache(
            keys=[k[index] for k in self.keys], values=[v[index] for v in self.values],
            slot_positions=self.slot_positions[index], next_position=self.next_position[index],
            grid=self.grid, latent_shape=self.latent_shape, window=self.window,
            rebase_at=self.rebase_at, last_frame=self.last_frame[index])
        taken.state = None if self.state is None else self.state[index]
        taken.foresight_logits = (None if self.foresight_logits is None
                                  else self.foresight_logits[index])
        taken.version = self.version
        return taken

    def keep_span(self, span: KVCache, begin: int) -> None:
        """Copy the fields a pass over rows ``begin:`` (:meth:`rows`) replaced back."""
        end = begin + span.batch_size
        self.last_frame[begin:end] = span.last_frame
        for name in ("state", "foresight_logits"):
            mine, theirs = getattr(self, name), getattr(span, name)
            if theirs is not None:
                if mine is None:
                    mine = theirs.new_zeros((self.batch_size, *theirs.shape[1:]))
                    setattr(self, name, mine)
                mine[begin:end] = theirs
        self.version += 1

    def load_rows(self, rows: Tensor, other: KVCache) -> None:
        """Replace batch rows ``rows`` (B,) bool with the rows of ``other`` (one per True)."""
        if other.slots != self.slots or other.grid != self.grid:
            raise ConfigError("restarted rows must use the model and frame size of the batch")
        for mine, theirs in zip(self.keys + self.values, other.keys + other.values):
            mine[rows] = theirs.to(mine.dtype)
        self.slot_positions[rows] = other.slot_positions
        self.next_position[rows] = other.next_position
        self.last_frame[rows] = other.last_frame.to(self.last_frame.dtype)
        if self.state is not None and other.state is not None:
            self.state[rows] = other.state
        if self.foresight_logits is not None and other.foresight_logits is not None:
            self.foresight_logits[rows] = other.foresight_logits
        self.version += 1


class DynamicsModel(nn.Module):
    """The action-conditioned spacetime-patch DiT.

    Raw network only: inputs are preconditioned latents and per-frame noise-level scalars
    (see :class:`worldsim.diffusion.edm.Denoiser`). Two ways to run the same blocks:
    :meth:`forward` (training: the doubled sequence) and :meth:`start` / :meth:`predict` /
    :meth:`commit` (inference: one new frame at a time over a :class:`KVCache`).
    """

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        check_dynamics_config(cfg)
        self.cfg = cfg
        self.patch = (cfg.patch_time, cfg.patch_height, cfg.patch_width)
        self.patch_embed = PatchEmbed(cfg)
        self.timestep_embedder = TimestepEmbedder(cfg.width, cfg.noise_features)
        self.action_embedder = ActionEmbedder(cfg.num_actions, cfg.width)
        self.rope = RotaryEmbedding3D(cfg.width // cfg.heads, cfg.rope_theta)
        self.blocks = nn.ModuleList(SpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.reward_head = RewardHead(cfg.width)
        self.termination_head = TerminationHead(cfg.width)
        self.foresight_head = ForesightHead(cfg.width, cfg.num_actions) \
            if cfg.foresight_head else None
        self.hold_head = HoldHead(cfg.width, cfg.num_actions, tokens=cfg.hold_tokens,
                                  members=cfg.hold_members) if cfg.hold_steps else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT init: Xavier linears, small embeddings, zero adaLN gates and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.action_embedder.table.weight, std=self.cfg.action_init_std)
        for layer in (self.timestep_embedder.mlp[0], self.timestep_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final_layer.modulation[-1], self.final_layer.linear,
                      self.reward_head.mlp[-1], self.termination_head.mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.foresight_head is not None:
            nn.init.zeros_(self.foresight_head.mlp[-1].weight)
            nn.init.zeros_(self.foresight_head.mlp[-1].bias)

    # ----- shared pieces -------------------------------------------------------------------

    def _condition(self, tokens: Tensor, noise: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-frame conditioning: ``(tokens, cond)`` for tokens ``(B, T, N, D)``, noise
        levels and incoming actions ``(B, T)``; ``cond`` ``(B, T, D)`` = noise-level + action
        embedding (adaLN), and with ``action_tokens`` the action is added to every token of
        its frame as well."""
        action = self.action_embedder(actions)  # (B, T, D)
        if self.cfg.action_tokens:
            tokens = tokens + action[:, :, None].to(tokens.dtype)
        return tokens, self.timestep_embedder(noise) + action

    def _grid(self, latents: Tensor) -> tuple[int, int]:
        c, h, w = latents.shape[-3:]
        if c != self.cfg.latent_channels:
            raise ConfigError(
                f"dynamics model was built for {self.cfg.latent_channels} latent channels, got "
                f"{c}; use the autoencoder the model was trained with"
            )
        if h % self.cfg.patch_height or w % self.cfg.patch_width:
            raise ConfigError(
                f"latent grid {h}x{w} is not divisible by the patch "
                f"{self.cfg.patch_height}x{self.cfg.patch_width}; use frames whose size is a "
                "multiple of downsample * patch"
            )
        return h // self.cfg.patch_height, w // self.cfg.patch_width

    def _check_actions(self, actions: Tensor) -> None:
        low, high = int(actions.min()), int(actions.max())
        if low < 0 or high > self.cfg.num_actions:
            raise ConfigError(
                f"actions must lie in 0..{self.cfg.num_actions - 1} (or {self.cfg.num_actions} "
                f"for unknown); got {low}..{high}: the model was "
                f"trained for {self.cfg.num_actions} actions"
            )

    def _rope(self, frame_positions: Tensor, grid: tuple[int, int],
              dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """RoPE cosines and sines (B, 1, T*N, Dh) in ``dtype`` for frames at ``frame_positions``."""
        positions = token_positions(frame_positions, grid)  # (B, T, N, 3)
        cos, sin = self.rope(rearrange(positions, "B T N three -> B 1 (T N) three"))
        return cos.to(dtype), sin.to(dtype)

    def _run_blocks(
        self,
        tokens: Tensor,
        cond: Tensor,
        frame_positions: Tensor,
        grid: tuple[int, int],
        mask: Tensor | None,
        kv: list[LayerKV] | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """All SpaceTimeBlocks over tokens (B, T, N, D) of frames at ``frame_positions``
        (``rope``: their precomputed rotation, if the caller has it)."""
        # the blocks' compute dtype is the tokens' (bfloat16 under autocast)
        rope = rope or self._rope(frame_positions, grid, tokens.dtype)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, cond, rope, mask, None if kv is None else kv[i])
        return tokens  # (B, T, N, D)

    # ----- training: doubled sequence ------------------------------------------------------

    def forward(
        self,
        target_in: Tensor,
        target_noise: Tensor,
        context_in: Tensor,
        context_noise: Tensor,
        incoming_actions: Tensor,
    ) -> DynamicsOutput:
        """One pass over context and target slots of a segment.

        Args:
            target_in: ``(B, T, c, h, w)`` preconditioned noisy frames (``c_in * x_noisy``).
            target_noise: ``(B, T)`` noise-level scalar of each target frame (``c_noise``).
            context_in: ``(B, T, c, h, w)`` preconditioned context frames (lightly noised).
            context_noise: ``(B, T)`` noise-level scalar of each context frame.
            incoming_actions: ``(B, T)`` long; ``A`` where unknown.

        Returns:
            Raw predictions for the target slots; reward and termination logit per frame
            from the context slots.
        """
        grid = self._grid(target_in)
        self._check_actions(incoming_actions)
        frames = target_in.shape[1]
        previous = shifted_frames(context_in)  # (B, T, c, h, w): context frame t - 1
        tokens = self.patch_embed(torch.cat([context_in, target_in], dim=1),
                                  previous.repeat(1, 2, 1, 1, 1))  # (B, 2T, N, D)
        noise = torch.cat([context_noise, target_noise], dim=1)  # (B, 2T)
        tokens, cond = self._condition(tokens, noise, incoming_actions.repeat(1, 2))
        time = torch.arange(frames, device=tokens.device).repeat(2)[None]  # (1, 2T)
        mask = doubled_sequence_mask(frames, self.cfg.context_frames, grid, tokens.device)
        hidden = self._run_blocks(tokens, cond, time, grid, mask)  # (B, 2T, N, D)
        context, target = hidden[:, :frames], hidden[:, frames:]  # (B, T, N, D) each
        values = self.final_layer(target, cond[:, frames:])  # (B, T, N, c*pt*ph*pw)
        return DynamicsOutput(
            prediction=unpatchify(values, self.patch, grid),  # (B, T, c, h, w)
            reward=self.reward_head(context),  # (B, T)
            termination_logit=self.termination_head(context),  # (B, T)
            foresight_logits=None if self.foresight_head is None
            else self.foresight_head(context),  # (B, T, A)
        )

    # ----- inference: cached stepping ------------------------------------------------------

    def _cached_pass(
        self, cache: KVCache, frames_in: Tensor, noise: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Frames (B, T', c, h, w) at the next positions through the blocks over the cache.

        Returns the hidden tokens (B, T', N, D) and the per-frame conditioning (B, T', D).
        """
        grid = self._grid(frames_in)
        if grid != cache.grid:
            raise ConfigError(f"frame patch grid {grid} differs from the cache's {cache.grid}")
        self._check_actions(actions)
        previous = None
        if self.cfg.previous_frame:  # frame t - 1 of each new frame: the cache's last first
            previous = shifted_frames(frames_in, first=cache.last_frame)
        tokens, cond = self._condition(self.patch_embed(frames_in, previous), noise, actions)
        # the denoising passes and the commit of one dream step all sit at the same
        # positions: their slots, mask and rotation are worked out once per step
        key = (cache.version, frames_in.shape[1], tokens.dtype)
        if cache.plan is None or cache.plan[0] != key:
            positions = cache.next_position[:, None] + torch.arange(
                frames_in.shape[1], device=frames_in.device
            )  # (B, T')
            kv = cache.claim_slots(positions)  # first: the new frames see their own slots
            cache.plan = (key, positions, kv,
                          cache.attention_mask(positions),  # (B, 1, T'*N, S*N) or None
                          self._rope(positions, grid, tokens.dtype))
        _, positions, kv, mask, rope = cache.plan
        return self._run_blocks(tokens, cond, positions, grid, mask, kv, rope), cond

    def new_cache(self, context_in: Tensor, rebase_at: int = 1024) -> KVCache:
        """An empty cache sized for batch and frame size of ``context_in`` (B, T, c, h, w).

        Keys/values are stored in the autocast dtype when autocast is on (half the memory
        traffic), else in the parameters' dtype.
        """
        grid = self._grid(context_in)
        batch, device = context_in.shape[0], context_in.device
        dtype = next(self.parameters()).dtype
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        slots = self.cfg.context_frames + 1
        shape = (batch, self.cfg.heads, slots, grid[0] * grid[1], self.cfg.width // self.cfg.heads)
        if rebase_at < 2 * slots:
            raise ConfigError(f"rebase_at must be at least {2 * slots} (twice the cache slots)")
        return KVCache(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in self.blocks],
            slot_positions=torch.full((batch, slots), EMPTY_SLOT, device=device),
            next_position=torch.zeros(batch, dtype=torch.long, device=device),
            grid=grid,
            latent_shape=tuple(context_in.shape[-3:]),
            window=self.cfg.context_frames,
            rebase_at=rebase_at,
            last_frame=torch.zeros_like(context_in[:, 0]),
        )

    @torch.no_grad()
    def start(
        self,
        context_in: Tensor,
        context_noise: Tensor,
        incoming_actions: Tensor,
        rebase_at: int = 1024,
        lengths: Tensor | None = None,
    ) -> tuple[KVCache, Tensor, Tensor]:
        """Commit a prompt of context frames into a fresh cache.

        The first ``context_frames + 1`` frames go through in one pass; each further frame
        costs one more pass (frame by frame, so the ring buffer never drops a frame a later
        prompt frame still attends to). The result equals the uncached forward pass over
        the whole prompt.

        Args:
            context_in: ``(B, T0, c, h, w)`` preconditioned clean frames, ``T0 >= 1``.
            context_noise: ``(B, T0)`` their noise-level scalars.
            incoming_actions: ``(B, T0)`` the action that led into each frame (``A`` unknown).
            rebase_at: positions at which a row's cache is shifted back (see :class:`KVCache`).
            lengths: ``(B,)`` prompts of several lengths in one batch: row ``i``'s prompt is
                its first ``lengths[i]`` frames (the rest is padding, never read). Each row
                ends as if started alone, at the cost of one batch of the longest prompt.

        Returns:
            The cache, and the reward ``(B,)`` and termination logit ``(B,)`` of the last frame
            (of each row's own prompt).
        """
        if lengths is not None:
            if lengths.shape != (context_in.shape[0],) or int(lengths.min()) < 1 or int(
                    lengths.max()) > context_in.shape[1]:
                raise ConfigError(f"prompt lengths must be one per row in 1..{context_in.shape[1]}"
                                  f", got {lengths.tolist()}")
            if int(lengths.min()) < context_in.shape[1]:
                return self._start_ragged(context_in, context_noise, incoming_actions,
                                          lengths, rebase_at)
        cache = self.new_cache(context_in, rebase_at)
        first = min(context_in.shape[1], cache.slots)
        reward, termination = self._first_pass(cache, context_in, context_noise,
                                               incoming_actions, first)
        for t in range(first, context_in.shape[1]):
            reward, termination = self.commit(
                cache, context_in[:, t : t + 1], context_noise[:, t : t + 1], incoming_actions[:, t]
            )
        return cache, reward, termination

    def _first_pass(self, cache: KVCache, context_in: Tensor, context_noise: Tensor,
                    incoming_actions: Tensor, first: int) -> tuple[Tensor, Tensor]:
        """Commit a prompt's first ``first`` frames (at most the cache's slots) in one pass;
        the reward ``(B,)`` and termination logit ``(B,)`` of the last of them."""
        hidden, _ = self._cached_pass(cache, context_in[:, :first], context_noise[:, :first],
                                      incoming_actions[:, :first])
        cache.advance(first)
        cache.last_frame = context_in[:, first - 1].clone()
        last = hidden[:, -1:]  # (B, 1, N, D)
        self._read_state(cache, last)
        return self.reward_head(last)[:, 0], self.termination_head(last)[:, 0]

    def _start_ragged(self, context_in: Tensor, context_noise: Tensor,
                      incoming_actions: Tensor, lengths: Tensor, rebase_at: int
                      ) -> tuple[KVCache, Tensor, Tensor]:
        """:meth:`start` for prompts of several lengths: rows sorted longest first, so the
        rows still committing frames are always the first ones (a view of the cache)."""
        order = torch.argsort(lengths, descending=True, stable=True)
        context_in, context_noise = context_in[order], context_noise[order]
        incoming_actions, lengths = incoming_actions[order], lengths[order].tolist()
        cache = self.new_cache(context_in, rebase_at)
        reward = context_in.new_zeros(len(lengths), dtype=torch.float32)
        termination = torch.zeros_like(reward)
        firsts = [min(length, cache.slots) for length in lengths]
        for first in sorted(set(firsts), reverse=True):  # one first pass per first length
            begin, end = firsts.index(first), len(firsts) - firsts[::-1].index(first)
            span = cache.rows(slice(begin, end))
            span_reward, span_termination = self._first_pass(
                span, context_in[begin:end], context_noise[begin:end],
                incoming_actions[begin:end], first)
            reward[begin:end] = span_reward.float()
            termination[begin:end] = span_termination.float()
            cache.keep_span(span, begin)
        for t in range(cache.slots, lengths[0]):  # then frame by frame, longest rows only
            count = sum(length > t for length in lengths)
            span = cache.rows(slice(0, count))
            span_reward, span_termination = self.commit(
                span, context_in[:count, t:t + 1], context_noise[:count, t:t + 1],
                incoming_actions[:count, t])
            reward[:count], termination[:count] = span_reward.float(), span_termination.float()
            cache.keep_span(span, 0)
        inverse = torch.argsort(order)
        return cache.rows(inverse), reward[inverse], termination[inverse]

    @torch.no_grad()
    def predict(
        self, cache: KVCache, frame_in: Tensor, noise: Tensor, incoming_action: Tensor
    ) -> Tensor:
        """Raw output for the next frame given the cached past; commits nothing.

        Args:
            cache: from :meth:`start`.
            frame_in: ``(B, 1, c, h, w)`` preconditioned noisy next frame.
            noise: ``(B, 1)`` its noise-level scalar.
            incoming_action: ``(B,)`` the action taken after the last committed frame.

        Returns:
            ``(B, 1, c, h, w)`` raw network output, as for a target slot in :meth:`forward`.
        """
        hidden, cond = self._cached_pass(cache, frame_in, noise, incoming_action[:, None])
        values = self.final_layer(hidden, cond)  # (B, 1, N, c*pt*ph*pw)
        return unpatchify(values, self.patch, cache.grid)  # (B, 1, c, h, w)

    @torch.no_grad()
    def commit(
        self, cache: KVCache, frame_in: Tensor, noise: Tensor, incoming_action: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Append a finished frame to the cache (evicting the oldest beyond the window).

        Args:
            cache: from :meth:`start`; updated in place.
            frame_in: ``(B, 1, c, h, w)`` preconditioned clean frame (a context slot).
            noise: ``(B, 1)`` its context noise-level scalar.
            incoming_action: ``(B,)`` the action that led into this frame.

        Returns:
            Reward ``(B,)`` and termination logit ``(B,)`` of the transition into the frame.
        """
        hidden, _ = self._cached_pass(cache, frame_in, noise, incoming_action[:, None])
        cache.advance(1)
        cache.last_frame = frame_in[:, 0].clone()
        cache.rebase(self.rope)
        self._read_state(cache, hidden)
        return self.reward_head(hidden)[:, 0], self.termination_head(hidden)[:, 0]

    def _read_state(self, cache: KVCache, hidden: Tensor) -> None:
        """Keep the state after the committed frame ``hidden`` ``(B, 1, N, D)`` on the cache,
        and the foresight head's logits ``(B, A)`` read from it, for the next step."""
        tokens = hidden[:, -1].float()  # (B, N, D)
        pooled = tokens.mean(dim=1)  # (B, D)
        cache.state = tokens.flatten(1) if self.cfg.hold_tokens else pooled
        if self.foresight_head is not None:
            cache.foresight_logits = self.foresight_head.read(pooled).float()

    @torch.no_grad()
    def restart_rows(
        self,
        cache: KVCache,
        rows: Tensor,
        context_in: Tensor,
        context_noise: Tensor,
        incoming_actions: Tensor,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Start the dreams of some batch rows afresh from new context; others untouched.

        Args:
            cache: the batch's cache; rows ``rows`` are replaced in place.
            rows: ``(B,)`` bool, which rows to restart.
            context_in: ``(R, T0, c, h, w)``, one prompt per restarted row (R = rows.sum()).
            context_noise: ``(R, T0)``.
            incoming_actions: ``(R, T0)``.
            lengths: ``(R,)`` each prompt's own length, as in :meth:`start`.

        Returns:
            Reward ``(R,)`` and termination logit ``(R,)`` of each new prompt's last frame.
        """
        if int(rows.sum()) != context_in.shape[0]:
            raise ConfigError(
                f"{int(rows.sum())} rows to restart but {context_in.shape[0]} prompts given"
            )
        fresh, reward, termination = self.start(
            context_in, context_noise, incoming_actions, cache.rebase_at, lengths
        )
        cache.load_rows(rows, fresh)
        return reward, termination


def shifted_frames(frames: Tensor, first: Tensor | None = None) -> Tensor:
    """Frame t - 1 of each frame t of ``frames`` (B, T, ...); for frame 0, ``first``
    (B, ...), the frame before the sequence, or zeros when there is none."""
    before = torch.zeros_like(frames[:, :1]) if first is None else first[:, None]
    return torch.cat([before.to(frames.dtype), frames[:, :-1]], dim=1)


def doubled_sequence_mask(
    frames: int, window: int, grid: tuple[int, int], device: torch.device | str = "cpu"
) -> Tensor:
    """Attention mask of the training pass over ``T`` context then ``T`` target slots.

    Context slot ``t`` sees context slots ``t - window .. t``; target slot ``t`` sees context
    slots ``t - window .. t - 1`` and itself. All tokens of a visible frame are visible.

    Returns:
        ``(2T*N, 2T*N)`` bool, True where attention is allowed.
    """
    t = torch.arange(frames, device=device)
    offset = t[:, None] - t[None, :]  # (T, T) query frame minus key frame
    context_sees_context = (offset >= 0) & (offset <= window)
    target_sees_context = (offset >= 1) & (offset <= window)
    target_sees_target = offset == 0
    nothing = torch.zeros_like(offset, dtype=torch.bool)
    frame_mask = torch.cat([
        torch.cat([context_sees_context, nothing], dim=1),
        torch.cat([target_sees_context, target_sees_target], dim=1),
    ])  # (2T, 2T)
    tokens = grid[0] * grid[1]
    return repeat(frame_mask, "Tq Tk -> (Tq Nq) (Tk Nk)", Nq=tokens, Nk=tokens)


def check_dynamics_config(cfg: DynamicsConfig) -> None:
    """Raise :class:`ConfigError` for a DynamicsConfig that cannot build a working model."""
    if cfg.patch_time != 1:
        raise ConfigError(
            f"patch_time={cfg.patch_time}: the dynamics model predicts one frame at a time "
            "from the frames before it, so a token may not span several frames; use "
            "patch_time=1 (patchify itself supports pt > 1 for other models)"
        )
    if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2 or cfg.width // cfg.heads < 6:
        raise ConfigError(
            f"width {cfg.width} with {cfg.heads} heads: width must split into heads of an "
            "even size >= 6 (3D rotary embedding); e.g. width 192 with 4 heads"
        )
    if cfg.context_frames < 1 or cfg.num_actions < 1 or cfg.depth < 1:
        raise ConfigError("context_frames, num_actions and depth must each be at least 1")
    if cfg.hold_tokens < 0 or (cfg.hold_tokens and not cfg.hold_steps):
        raise ConfigError(f"hold_tokens={cfg.hold_tokens}: the tokens a hold head reads "
                          "must be >= 0, and only a model with a hold head (hold_steps > 0) "
                          "reads them")
    if cfg.hold_steps < 0:
        raise ConfigError(f"hold_steps={cfg.hold_steps}: the hold head's steps must be >= 1 "
                          "(or 0 for no hold head)")
    if cfg.hold_members < 1:
        raise ConfigError(f"hold_members={cfg.hold_members}: a hold head is at least one "
                          "MLP (1 for a single head)")


def incoming_from_transitions(
    actions: Tensor, rewards: Tensor, terminated: Tensor, num_actions: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Convert the data convention (outcome of ``actions[t]`` seen in ``frames[t + 1]``) to
    the model's per-frame *incoming* convention for a segment of ``T`` frames.

    Args:
        actions: ``(B, T - 1)`` action taken after each frame but the last.
        rewards: ``(B, T - 1)`` its reward.
        terminated: ``(B, T - 1)`` whether it ended the episode.
        num_actions: A; frame 0's incoming action becomes the unknown index ``A``.

    Returns:
        ``(incoming_actions, incoming_rewards, incoming_terminated)``, each ``(B, T)``; frame 0
        gets action ``A``, reward 0 and not-terminated (the loss skips frame 0 anyway).
    """
    first = torch.full_like(actions[:, :1], num_actions)
    return (
        torch.cat([first, actions], dim=1),
        F.pad(rewards.float(), (1, 0)),
        F.pad(terminated.float(), (1, 0)),
    )
