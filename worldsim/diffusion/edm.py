"""EDM diffusion for the dynamics model: preconditioning, training objective, sampler.

The network (:class:`worldsim.models.dit.DynamicsModel`) never sees the noise schedule.
:class:`Denoiser` wraps it with Karras et al.'s preconditioning (``c_in``, ``c_out``,
``c_skip``, ``c_noise``) as DIAMOND does (``src/models/diffusion/denoiser.py``), including
DIAMOND's offset noise. :class:`EDMObjective` draws noise levels and computes the loss;
:class:`EDMSampler` turns noise into the next latent frame in a few Euler (or Heun) steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldsim.errors import ConfigError
from worldsim.models.dit import DynamicsModel, DynamicsOutput, KVCache, shifted_frames
from worldsim.noise import NoiseStreams
from worldsim.sampler_settings import (  # noqa: F401 (re-exported; their home is torch-free)
    SAMPLER_FIELDS,
    parse_sampler_settings,
)

# Noise levels are floored here before the log in c_noise, so a clean context frame
# (sigma 0, no offset noise) gets a finite conditioning value.
SIGMA_FLOOR = 1e-3


@dataclass
class DenoiserConfig:
    """Preconditioning constants; saved with the dynamics checkpoint."""

    sigma_data: float = 1.0  # std of the data: latents are normalised to unit std
    sigma_offset_noise: float = 0.3  # per-channel constant noise added in training (DIAMOND)
    context_sigma: float = 0.0  # noise level committed (clean) frames are conditioned on
    # diffuse the change from the previous frame instead of the frame itself: what stays put
    # is an exact zero to predict, so static things cannot drift or fade step after step
    residual: bool = False


@dataclass
class Conditioners:
    """EDM preconditioning factors, each broadcastable to ``(B, T, c, h, w)``, but
    ``c_noise`` which is ``(B, T)``."""

    c_in: Tensor
    c_out: Tensor
    c_skip: Tensor
    c_noise: Tensor


class Denoiser(nn.Module):
    """Dynamics network + EDM preconditioning: the thing objective and sampler call.

    ``D(x; sigma) = c_skip * x + c_out * F(c_in * x; c_noise)`` with the network ``F``.
    Context frames enter as ``c_in(sigma_ctx) * x_ctx`` with their own ``c_noise``.
    """

    def __init__(self, model: DynamicsModel, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    @property
    def num_actions(self) -> int:
        """A; the index A itself stands for an unknown action."""
        return self.model.cfg.num_actions

    def conditioners(self, sigma: Tensor) -> Conditioners:
        """Preconditioning for noise levels ``sigma`` of shape ``(B, T)``."""
        sigma = (sigma.float() ** 2 + self.cfg.sigma_offset_noise**2).sqrt()
        sigma_data = self.cfg.sigma_data
        c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * c_skip.sqrt()
        c_noise = sigma.clamp_min(SIGMA_FLOOR).log() / 4
        frame = (..., None, None, None)  # (B, T) -> (B, T, 1, 1, 1)
        return Conditioners(c_in[frame], c_out[frame], c_skip[frame], c_noise)

    def forward(
        self,
        noisy: Tensor,
        sigma: Tensor,
        context: Tensor,
        context_sigma: Tensor,
        incoming_actions: Tensor,
    ) -> tuple[DynamicsOutput, Conditioners]:
        """Training pass: raw network output for noisy targets over a context segment.

        Args:
            noisy: ``(B, T, c, h, w)`` target frames at noise ``sigma``.
            sigma: ``(B, T)`` noise levels of the targets.
            context: ``(B, T, c, h, w)`` context frames (lightly noised).
            context_sigma: ``(B, T)`` noise levels of the context frames.
            incoming_actions: ``(B, T)``.

        Returns:
            The network's raw output and the targets' conditioners (to form the loss target
            or the denoised estimate ``c_skip * noisy + c_out * prediction``).
        """
        target_cs, context_cs = self.conditioners(sigma), self.conditioners(context_sigma)
        out = self.model(
            target_cs.c_in * noisy, target_cs.c_noise,
            context_cs.c_in * context, context_cs.c_noise, incoming_actions,
        )
        return out, target_cs

    # ----- cached inference ----------------------------------------------------------------

    def _context(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.full(frames.shape[:2], self.cfg.context_sigma, device=frames.device)
        cs = self.conditioners(sigma)
        return cs.c_in * frames, cs.c_noise

    @torch.no_grad()
    def start(
        self, context_latents: Tensor, incoming_actions: Tensor, rebase_at: int = 1024,
        lengths: Tensor | None = None,
    ) -> tuple[KVCache, Tensor, Tensor]:
        """Prompt a batch of dreams with real latent frames.

        Args:
            context_latents: ``(B, T0, c, h, w)`` clean latents; prompts longer than
                ``context_frames + 1`` cost one extra network pass per extra frame.
            incoming_actions: ``(B, T0)``; use ``A`` (unknown) for the first frame.
            rebase_at: see :class:`worldsim.models.dit.KVCache`.
            lengths: ``(B,)`` each row's prompt length when they differ (the rest padding).

        Returns:
            The dream state (a :class:`KVCache`), and reward ``(B,)`` and termination logit
            ``(B,)`` the model assigns to the last prompt frame.
        """
        frames_in, noise = self._context(context_latents)
        return self.model.start(frames_in, noise, incoming_actions, rebase_at, lengths)

    @torch.no_grad()
    def denoise(
        self, state: KVCache, noisy: Tensor, sigma: float | Tensor, incoming_action: Tensor
    ) -> Tensor:
        """Denoised estimate of the next frame; does not change the committed frames.

        Args:
            state: from :meth:`start`.
            noisy: ``(B, 1, c, h, w)`` next frame at noise ``sigma``.
            sigma: a float or ``(B,)`` noise level(s).
            incoming_action: ``(B,)`` action taken after the last committed frame.

        Returns:
            ``(B, 1, c, h, w)`` estimate of the clean next frame.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=noisy.device)
        cs = self.conditioners(sigma.expand(noisy.shape[0])[:, None])
        raw = self.model.predict(state, cs.c_in * noisy, cs.c_noise, incoming_action)
        return cs.c_skip * noisy + cs.c_out * raw.float()

    @torch.no_grad()
    def commit(
        self, state: KVCache, clean: Tensor, incoming_action: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Append a finished frame to every dream; see ``DynamicsModel.commit``.

        Returns:
            Reward ``(B,)`` and termination logit ``(B,)`` of the transition into ``clean``.
        """
        frames_in, noise = self._context(clean)
        reward, termination = self.model.commit(state, frames_in, noise, incoming_action)
        return reward.float(), termination.float()

    @torch.no_grad()
    def restart_rows(
        self, state: KVCache, rows: Tensor, context_latents: Tensor, incoming_actions: Tensor,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Restart the dreams of rows ``rows`` (B,) bool from new prompts ``(R, T0, ...)``
        (of ``lengths`` ``(R,)`` frames each when they differ)."""
        frames_in, noise = self._context(context_latents)
        return self.model.restart_rows(state, rows, frames_in, noise, incoming_actions, lengths)


def foresight_loss(logits: Tensor, incoming_actions: Tensor, incoming_terminated: Tensor,
                   weight: Tensor, num_actions: int) -> Tensor:
    """BCE of the foresight head: frame ``t``'s logit for the action taken next
    (``incoming_actions[:, t + 1]``) against whether that step ended the episode, weighted
    like the transition into ``t + 1`` (``weight``, ``(B, T)``); steps whose action is
    unknown are not scored."""
    nxt = incoming_actions[:, 1:]  # (B, T - 1)
    known = nxt < num_actions
    chosen = logits[:, :-1].float().gather(2, nxt.clamp_max(num_actions - 1)[..., None])[..., 0]
    bce = F.binary_cross_entropy_with_logits(
        chosen, incoming_terminated[:, 1:].float(), reduction="none")
    return (bce * weight[:, 1:] * known).sum()


@dataclass
class EDMObjective:
    """Training loss: EDM denoising on target slots plus reward and termination heads.

    Defaults follow DIAMOND's noise distribution (log-normal, loc -0.4, scale 1.2, clipped
    to [2e-3, 20]) and GameNGen's context noise augmentation, which teaches the model to
    trust its own slightly-wrong generated frames so long rollouts do not drift.
    """

    p_mean: float = -0.4  # mean of ln(sigma) for target frames
    p_std: float = 1.2  # std of ln(sigma)
    sigma_min: float = 2e-3  # training sigmas are clipped to [sigma_min, sigma_max]
    sigma_max: float = 20.0
    sigma_aug_max: float = 0.7  # context frames get noise sigma_aug ~ U[0, sigma_aug_max]
    reward_weight: float = 1.0  # weight of the reward MSE in the total loss
    termination_weight: float = 1.0  # weight of the termination BCE in the total loss
    foresight_weight: float = 1.0  # weight of the foresight head's BCE (models with one)
    action_dropout: float = 0.05  # chance that a frame's incoming action is made "unknown"
    # importance-weight the reward and termination losses like the denoising loss: a
    # calibrated hazard (dreams die as often as the game; TakeCover: 0.75 predicted ends per
    # real end, recall 0.76 / precision 0.99 at 0.5). False: the heads learn the oversampled
    # end rate (recall 0.98 / precision 0.61, but 2.2x too many ends on real frames and up
    # to 30x in dreams, whose frames are more ambiguous)
    weight_heads: bool = True
    # extra weight of the latent cells that change from the previous frame: a cell's squared
    # error counts 1 + change_weight * |change| (mean over channels), normalised per frame.
    # 0 (default): every cell alike, so a small moving object (a ball in one cell of 64) is
    # a small share of the loss and the model may learn to leave it out
    change_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.change_weight >= 0:
            raise ConfigError(f"change_weight (--change-weight) must be 0 or more, got "
                              f"{self.change_weight}")

    def loss(
        self,
        denoiser: Denoiser,
        latents: Tensor,
        incoming_actions: Tensor,
        incoming_rewards: Tensor | None = None,
        incoming_terminated: Tensor | None = None,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
        rows: slice | None = None,
        row_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one batch of segments.

        Frame 0 of each segment has no past, so it is never a target and its reward and
        termination are not scored. Padding must come after the valid frames (attention is
        causal, so padding then never influences a valid frame).

        Args:
            denoiser: the preconditioned model.
            latents: ``(B, T, c, h, w)`` clean normalised latents.
            incoming_actions: ``(B, T)`` long, action into each frame (``A`` = unknown).
            incoming_rewards: ``(B, T)`` reward into each frame, or None to skip the head.
            incoming_terminated: ``(B, T)`` 0/1, or None to skip the head.
            valid: ``(B, T)`` bool, False for padding frames; None = all valid.
            generator: for reproducible noise.
            rows: which rows of the global batch these are (distributed training). Every
                random draw is made per global row from ``generator``'s seed, so N processes
                with a share each draw exactly what one process draws for the whole batch.
            row_weights: ``(B,)`` importance weights of the rows (see
                :class:`~worldsim.data.SegmentSampler`'s ``end_fraction``), applied to the
                denoising loss and, with ``weight_heads``, to the heads: oversampled episode
                ends give the termination head many examples (lower variance), the weights
                keep its hazard calibrated to the data's own odds. Unweighted, the head
                learns the oversampled rate wherever the end segments put their last frame
                (the last position of a full window, which is where every dream step sits)
                and a dream dies ~10x too often whenever its frames are ambiguous.

        Returns:
            The scalar loss and detached metrics (``loss_denoise``, ``loss_reward``,
            ``loss_termination``).
        """
        batch, frames = latents.shape[:2]
        if frames < 2:
            raise ConfigError("training segments need at least 2 frames (frame 0 is context only)")
        device = latents.device

        draws = self.draw_noise(latents.shape, generator, rows, device)
        sigma, sigma_aug = draws.sigma, draws.sigma_aug  # (B, T) each
        offset = denoiser.cfg.sigma_offset_noise * draws.offset
        clean = latents - residual_base(denoiser, latents)  # what is diffused
        noisy = clean + offset + sigma[..., None, None, None] * draws.noise
        context = latents + sigma_aug[..., None, None, None] * draws.context_noise
        # learn the action-free dynamics too
        taken = incoming_actions  # the real actions, for the foresight head's labels
        incoming_actions = incoming_actions.masked_fill(draws.drop_action, denoiser.num_actions)

        out, cs = denoiser(noisy, sigma, context, sigma_aug, incoming_actions)
        target = (clean - cs.c_skip * noisy) / cs.c_out
        squared = (out.prediction.float() - target).pow(2)  # (B, T, c, h, w)
        if self.change_weight:
            cells = change_weights(latents.float(), self.change_weight)  # (B, T, 1, h, w)
            per_frame = (squared * cells).mean(dim=(2, 3, 4)) / cells.mean(dim=(2, 3, 4))
        else:
            per_frame = squared.mean(dim=(2, 3, 4))  # (B, T)

        scored = torch.ones(batch, frames, dtype=torch.bool, device=device)
        scored[:, 0] = False
        if valid is not None:
            scored &= valid.bool()
        weight = scored.float() / scored.sum().clamp_min(1)  # (B, T), sums to 1
        frame_weight = head_weight = weight
        if row_weights is not None:  # mean 1 over the sampling distribution: not renormalised,
            # so every process of a distributed run scales its rows alike
            frame_weight = weight * row_weights.float()[:, None].to(device)
            head_weight = frame_weight if self.weight_heads else weight
        loss_denoise = (per_frame * frame_weight).sum()
        metrics = {"loss_denoise": loss_denoise.detach()}
        loss = loss_denoise
        if incoming_rewards is not None:
            reward_error = (out.reward.float() - incoming_rewards.float()).pow(2)
            loss_reward = (reward_error * head_weight).sum()
            loss = loss + self.reward_weight * loss_reward
            metrics["loss_reward"] = loss_reward.detach()
        if incoming_terminated is not None:
            bce = F.binary_cross_entropy_with_logits(
                out.termination_logit.float(), incoming_terminated.float(), reduction="none"
            )
            loss_termination = (bce * head_weight).sum()
            loss = loss + self.termination_weight * loss_termination
            metrics["loss_termination"] = loss_termination.detach()
        if incoming_terminated is not None and out.foresight_logits is not None:
            loss_foresight = foresight_loss(out.foresight_logits, taken, incoming_terminated,
                                            head_weight, denoiser.num_actions)
            loss = loss + self.foresight_weight * loss_foresight
            metrics["loss_foresight"] = loss_foresight.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def draw_noise(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
                   rows: slice | None = None, device: torch.device | str = "cpu") -> TrainingNoise:
        """All random draws of a batch of latents of ``shape`` ``(B, T, c, h, w)``.

        Row ``i`` of the batch is global row ``rows.start + i``; each global row has its own
        stream seeded from ``generator``, so splitting a batch across processes splits the
        draws exactly.
        """
        batch, frames, channels = shape[0], shape[1], shape[2]
        first = 0 if rows is None else rows.start
        base = int(torch.randint(2**62, (1,), generator=generator, device=device).item())
        streams = NoiseStreams.seeded(
            [base * 1_000_003 + first + i for i in range(batch)], device)
        sigma = (streams.normal(frames) * self.p_std + self.p_mean).exp()
        return TrainingNoise(
            sigma=sigma.clamp(self.sigma_min, self.sigma_max),
            offset=streams.normal(frames, channels, 1, 1),
            noise=streams.normal(*shape[1:]),
            sigma_aug=streams.uniform(frames) * self.sigma_aug_max,
            context_noise=streams.normal(*shape[1:]),
            drop_action=streams.uniform(frames) < self.action_dropout,
        )


def change_weights(latents: Tensor, strength: float) -> Tensor:
    """``1 + strength * |x_t - x_{t-1}|`` per latent cell (mean over channels), ``(B, T, 1, h,
    w)`` for ``(B, T, c, h, w)`` latents; 1 for frame 0, which has no past."""
    change = torch.zeros_like(latents[:, :, :1])
    change[:, 1:] = (latents[:, 1:] - latents[:, :-1]).abs().mean(dim=2, keepdim=True)
    return 1 + strength * change


@dataclass
class TrainingNoise:
    """Every random draw of one training batch, each ``(B, T, ...)``."""

    sigma: Tensor  # (B, T) noise level of each target frame
    offset: Tensor  # (B, T, c, 1, 1) unit offset noise (scaled by sigma_offset_noise)
    noise: Tensor  # (B, T, c, h, w) unit noise of the targets
    sigma_aug: Tensor  # (B, T) noise level of each context frame
    context_noise: Tensor  # (B, T, c, h, w) unit noise of the context frames
    drop_action: Tensor  # (B, T) bool, frames whose incoming action is made unknown


@dataclass
class EDMSampler:
    """Few-step sampler for the next latent frame (Karras et al. 2022, as in DIAMOND).

    ``temperature`` scales the initial noise and any churn noise: 1 is the EDM sampler,
    below 1 gives likelier, more repeatable dreams, 0 a deterministic one (DIAMOND starts
    from unit-std noise at sigma_max = 5, which is temperature 0.2 here). Above 1 makes the
    dream less predictable, the classic remedy for an agent exploiting the dream's holes.
    """

    denoise_steps: int = 2  # network evaluations per frame with Euler (Heun adds steps - 1)
    sigma_min: float = 2e-3  # smallest nonzero noise level of the schedule
    sigma_max: float = 5.0  # noise level the sample starts from
    rho: float = 7.0  # Karras schedule curvature
    order: int = 1  # 1: Euler, 2: Heun
    s_churn: float = 0.0  # EDM stochasticity: re-noise by up to gamma = s_churn / steps
    temperature: float = 1.0  # scale of the initial (and churn) noise
    # classifier-free guidance on the action: each denoised estimate is pushed away from
    # the action-free one (the "unknown action" the model learnt through action dropout) by
    # this factor; 1: plain conditioning; above 1 strengthens what the action does, at
    # twice the network passes
    action_guidance: float = 1.0

    def sigmas(self) -> list[float]:
        """The ``denoise_steps + 1`` noise levels, from ``sigma_max`` down to 0."""
        if self.denoise_steps < 1 or self.order not in (1, 2):
            raise ConfigError("EDMSampler needs denoise_steps >= 1 and order 1 or 2")
        if self.denoise_steps == 1:
            return [self.sigma_max, 0.0]
        low, high = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        steps = self.denoise_steps - 1
        ramp = [(high + i / steps * (low - high)) ** self.rho for i in range(steps + 1)]
        return ramp + [0.0]

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        state: KVCache,
        incoming_action: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | NoiseStreams | None = None,
    ) -> Tensor:
        """Generate the next latent frame of every dream; commits nothing.

        Args:
            denoiser: the preconditioned model.
            state: the dreams' cache.
            incoming_action: ``(B,)`` the action taken after each dream's last frame.
            generator: source of all noise (for reproducible dreams): one for the batch, or
                one stream per dream, so that a dream's frames do not depend on its
                batch-mates: :class:`~worldsim.noise.NoiseStreams` (one batched draw) or a
                sequence of generators (one draw per dream).

        Returns:
            ``(B, 1, c, h, w)`` the next clean latent frames; pass them to
            ``denoiser.commit``.
        """
        shape = (state.batch_size, 1, *state.latent_shape)
        device = state.next_position.device

        def noise() -> Tensor:  # (B, 1, c, h, w)
            if isinstance(generator, NoiseStreams):
                return generator.normal(*shape[1:])
            if isinstance(generator, (list, tuple)):
                return torch.stack([torch.randn(shape[1:], generator=g, device=device)
                                    for g in generator])
            return torch.randn(shape, generator=generator, device=device)

        def denoise(x: Tensor, sigma: float) -> Tensor:
            denoised = denoiser.denoise(state, x, sigma, incoming_action)
            if self.action_guidance == 1.0:
                return denoised
            free = denoiser.denoise(state, x, sigma,
                                    torch.full_like(incoming_action, denoiser.num_actions))
            return free + self.action_guidance * (denoised - free)

        sigmas = self.sigmas()
        x = noise() * sigmas[0] * self.temperature
        gamma = min(self.s_churn / self.denoise_steps, math.sqrt(2) - 1)
        for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0 and self.temperature > 0:
                x = x + noise() * self.temperature * math.sqrt(sigma_hat**2 - sigma**2)
            denoised = denoise(x, sigma_hat)
            slope = (x - denoised) / sigma_hat
            x_next = x + slope * (next_sigma - sigma_hat)
            if self.order == 2 and next_sigma > 0:
                denoised_next = denoise(x_next, next_sigma)
                slope_next = (x_next - denoised_next) / next_sigma
                x_next = x + (slope + slope_next) / 2 * (next_sigma - sigma_hat)
            x = x_next
        return x


def sampler_settings(sampler: EDMSampler) -> dict[str, Any]:
    """The :data:`SAMPLER_FIELDS` of ``sampler``, for a results file."""
    return {key: getattr(sampler, key) for key in SAMPLER_FIELDS}


def with_sampler_settings(sampler: EDMSampler, settings: dict[str, Any]) -> EDMSampler:
    """A copy of ``sampler`` with ``settings`` applied; raises ``ConfigError`` on settings it
    cannot use."""
    changed = replace(sampler, **settings)
    changed.sigmas()
    if changed.temperature < 0:
        raise ConfigError(f"sampler temperature must be >= 0, got {changed.temperature}")
    if changed.action_guidance < 0:
        raise ConfigError(f"sampler action_guidance must be >= 0, got "
                          f"{changed.action_guidance}")
    return changed


def residual_base(denoiser: Denoiser, latents: Tensor) -> Tensor:
    """What the diffused quantity of each frame of ``latents`` (B, T, c, h, w) is relative to:
    the frame before it when the denoiser is residual (zeros for frame 0, which is never a
    target), else 0."""
    if not denoiser.cfg.residual:
        return torch.zeros_like(latents[:, :1])
    return shifted_frames(latents)
