"""Networks and diffusion: shapes, causality, cached == uncached, overfitting, errors.

All on the ``tiny`` presets, on CPU. Weights are randomised where a freshly initialised
DiT would be trivially right (adaLN-Zero makes every block the identity at init).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from worldsim.diffusion import Denoiser, DenoiserConfig, EDMObjective, EDMSampler
from worldsim.diffusion.edm import TrainingNoise, change_weights, with_sampler_settings
from worldsim.errors import ConfigError
from worldsim.models import (
    AUTOENCODER_PRESETS,
    DYNAMICS_PRESETS,
    Autoencoder,
    AutoencoderConfig,
    DynamicsConfig,
    DynamicsModel,
    incoming_from_transitions,
    patchify,
    to_uint8,
    unpatchify,
)
from worldsim.models.dit import (
    ActionEmbedder,
    FinalLayer,
    PatchEmbed,
    RewardHead,
    SpaceTimeBlock,
    TimestepEmbedder,
    doubled_sequence_mask,
    shifted_frames,
)
from worldsim.models.patches import RotaryEmbedding3D, apply_rope, token_positions

TINY = DYNAMICS_PRESETS["tiny"]
C = TINY.latent_channels
A = TINY.num_actions
W = TINY.context_frames


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def random_model(cfg: DynamicsConfig = TINY) -> DynamicsModel:
    """A tiny DiT with every parameter random, in eval mode (no action dropout)."""
    model = DynamicsModel(cfg).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.15)
    return model


def random_sequence(batch: int, frames: int, h: int = 8, w: int = 8) -> dict[str, torch.Tensor]:
    """Inputs of one raw training pass: target/context frames, noise scalars, actions."""
    return {
        "target_in": torch.randn(batch, frames, C, h, w),
        "target_noise": torch.rand(batch, frames) * 2 - 1.5,
        "context_in": torch.randn(batch, frames, C, h, w),
        "context_noise": torch.rand(batch, frames) * 0.5 - 1.5,
        "incoming_actions": torch.randint(0, A + 1, (batch, frames)),
    }


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return torch.allclose(a, b, atol=tol, rtol=tol)


# ----- patches and RoPE ---------------------------------------------------------------------


@pytest.mark.parametrize("frame_size", [(64, 64), (48, 80)])
def test_patchify_round_trip_and_layout(frame_size: tuple[int, int]) -> None:
    h, w = frame_size[0] // 8, frame_size[1] // 8
    latents = torch.randn(2, 3, C, h, w)
    tokens = patchify(latents, (1, 2, 2))
    assert tokens.shape == (2, 3, (h // 2) * (w // 2), C * 4)
    # token 1 is the patch at latent rows 0-1, columns 2-3, channel-major
    assert torch.equal(tokens[0, 0, 1], latents[0, 0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(unpatchify(tokens, (1, 2, 2), (h // 2, w // 2)), latents)
    # patchify itself supports patches spanning frames
    tokens_t2 = patchify(latents[:, :2], (2, 2, 2))
    assert tokens_t2.shape == (2, 1, (h // 2) * (w // 2), C * 8)
    assert torch.equal(unpatchify(tokens_t2, (2, 2, 2), (h // 2, w // 2)), latents[:, :2])


def test_patchify_rejects_indivisible_grid() -> None:
    with pytest.raises(ConfigError):
        patchify(torch.randn(1, 1, C, 7, 8), (1, 2, 2))


def test_rope_depends_only_on_offsets() -> None:
    rope = RotaryEmbedding3D(head_dim=16, theta=100.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(pos_q: list[float], pos_k: list[float]) -> torch.Tensor:
        cos_q, sin_q = rope(torch.tensor(pos_q))
        cos_k, sin_k = rope(torch.tensor(pos_k))
        return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum()

    base = score([3.0, 1.0, 2.0], [1.0, 0.0, 4.0])
    assert close(base, score([1003.0, 6.0, 9.0], [1001.0, 5.0, 11.0]))
    for changed in ([4.0, 1.0, 2.0], [3.0, 2.0, 2.0], [3.0, 1.0, 3.0]):  # each axis matters
        assert not close(base, score(changed, [1.0, 0.0, 4.0]), 1e-3)


def test_token_positions_are_row_major() -> None:
    positions = token_positions(torch.tensor([[5, 6]]), (2, 3))
    assert positions.shape == (1, 2, 6, 3)
    assert positions[0, 1, 4].tolist() == [6.0, 1.0, 1.0]


# ----- autoencoder --------------------------------------------------------------------------


@pytest.mark.parametrize("frame_size", [(64, 64), (48, 80)])
def test_autoencoder_shapes(frame_size: tuple[int, int]) -> None:
    ae = Autoencoder(AUTOENCODER_PRESETS["tiny"]).eval()
    frames = torch.randint(0, 256, (2, 3, 3, *frame_size), dtype=torch.uint8)
    latents = ae.encode(frames)
    c = AUTOENCODER_PRESETS["tiny"].latent_channels
    assert latents.shape == (2, 3, c, frame_size[0] // 8, frame_size[1] // 8)
    assert latents.dtype == torch.float32
    decoded = ae.decode(latents)
    assert decoded.shape == (2, 3, 3, *frame_size)
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert to_uint8(decoded).dtype == torch.uint8
    # uint8 and float input agree
    assert close(ae.encode(frames.float() / 127.5 - 1), latents)


def test_autoencoder_latent_stats_normalise() -> None:
    ae = Autoencoder(AUTOENCODER_PRESETS["tiny"]).eval()
    frames = torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        raw = ae.encode_raw(frames)
        ae.fit_latent_stats(raw)
        latents = ae.encode(frames)
    per_channel = latents.transpose(0, 2).reshape(latents.shape[2], -1)
    assert close(per_channel.mean(1), torch.zeros(latents.shape[2]), 1e-4)
    assert close(per_channel.std(1), torch.ones(latents.shape[2]), 1e-4)
    # decode undoes the normalisation: same frames as decoding the raw latents
    assert close(ae.decode(latents), ae.decode_raw(raw).clamp(-1, 1), 1e-4)


def test_autoencoder_rejects_bad_frames() -> None:
    ae = Autoencoder(AUTOENCODER_PRESETS["tiny"])
    with pytest.raises(ConfigError, match="divisible by 8"):
        ae.encode(torch.zeros(1, 1, 3, 60, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError):
        ae.encode(torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8))  # channels last
    with pytest.raises(ConfigError):
        Autoencoder(AutoencoderConfig(downsample=6))
    # downsample 16 (four stages) is allowed
    ae16 = Autoencoder(dataclasses.replace(AUTOENCODER_PRESETS["tiny"], downsample=16))
    assert ae16.encode(torch.zeros(1, 1, 3, 32, 64)).shape[-2:] == (2, 4)


def test_autoencoder_overfits() -> None:
    ae = Autoencoder(AUTOENCODER_PRESETS["tiny"])
    grid = torch.linspace(-1, 1, 32)
    frames = torch.stack([  # smooth structured frames, not noise
        torch.stack([torch.sin(3 * grid[:, None] + k) * torch.cos(2 * grid[None] - k)] * 3)
        for k in range(4)
    ])[:, None]  # (4, 1, 3, 32, 32)
    optimizer = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, metrics = ae.reconstruction_loss(frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["psnr"] > 10 * torch.log10(torch.tensor(4 / losses[0]))


# ----- dynamics modules ---------------------------------------------------------------------


def test_module_shapes() -> None:
    cfg = TINY
    D = cfg.width
    latents = torch.randn(2, 3, C, 8, 6)
    tokens = PatchEmbed(cfg)(latents, shifted_frames(latents))
    assert tokens.shape == (2, 3, 12, D)
    assert TimestepEmbedder(D, cfg.noise_features)(torch.rand(2, 3)).shape == (2, 3, D)
    embedder = ActionEmbedder(A, D)
    assert embedder(torch.randint(0, A + 1, (2, 3))).shape == (2, 3, D)
    cond = torch.randn(2, 3, D)
    rope = RotaryEmbedding3D(D // cfg.heads, cfg.rope_theta)(
        token_positions(torch.arange(3)[None], (4, 3)).flatten(1, 2)[:, None]
    )
    mask = torch.ones(36, 36, dtype=torch.bool)
    assert SpaceTimeBlock(cfg)(tokens, cond, rope, mask).shape == (2, 3, 12, D)
    assert FinalLayer(cfg)(tokens, cond).shape == (2, 3, 12, C * 4)
    assert RewardHead(D)(tokens).shape == (2, 3)


def test_training_noise_splits_exactly_by_rows() -> None:
    objective = EDMObjective(action_dropout=0.5)
    shape = (4, 100, C, 2, 2)

    def draws(rows: slice | None, batch: int) -> TrainingNoise:
        return objective.draw_noise((batch, *shape[1:]), torch.Generator().manual_seed(7), rows)

    whole = draws(None, 4)
    halves = [draws(slice(0, 2), 2), draws(slice(2, 4), 2)]
    for field in ("sigma", "offset", "noise", "sigma_aug", "context_noise", "drop_action"):
        joined = torch.cat([getattr(h, field) for h in halves])
        assert torch.equal(joined, getattr(whole, field)), field
    assert 0.4 < whole.drop_action.float().mean() < 0.6
    assert not torch.equal(whole.noise[0], whole.noise[1])
    assert not torch.equal(draws(None, 4).noise, objective.draw_noise(
        shape, torch.Generator().manual_seed(8)).noise)


def test_doubled_sequence_mask() -> None:
    mask = doubled_sequence_mask(frames=4, window=2, grid=(1, 1))
    context_rows = mask[:4]
    assert context_rows[:, :4].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [False, True, True, True],  # window 2: frame 0 is too old for frame 3
    ]
    assert not context_rows[:, 4:].any()  # context never sees targets
    target_rows = mask[4:]
    assert target_rows[:, :4].tolist() == [
        [False, False, False, False],
        [True, False, False, False],
        [True, True, False, False],
        [False, True, True, False],
    ]
    assert torch.equal(target_rows[:, 4:], torch.eye(4, dtype=torch.bool))
    assert doubled_sequence_mask(3, 2, (2, 2)).shape == (24, 24)


def test_forward_shapes_frame_sizes_and_context_lengths() -> None:
    model = random_model()
    for (h, w), frames in [((8, 8), 3), ((6, 10), 5)]:  # 64x64 and 48x80 frames
        out = model(**random_sequence(2, frames, h, w))
        assert out.prediction.shape == (2, frames, C, h, w)
        assert out.reward.shape == out.termination_logit.shape == (2, frames)
        assert torch.isfinite(out.prediction).all()


def test_frame_causality() -> None:
    model = random_model()
    inputs = random_sequence(2, 6)
    out = model(**inputs)
    k = 3
    changed = {key: value.clone() for key, value in inputs.items()}
    changed["target_in"][:, k] += 1.0
    changed["context_in"][:, k] += 1.0
    changed["incoming_actions"][:, k] = (changed["incoming_actions"][:, k] + 1) % A
    out2 = model(**changed)
    assert close(out.prediction[:, :k], out2.prediction[:, :k], 1e-5)
    assert close(out.reward[:, :k], out2.reward[:, :k], 1e-5)
    assert close(out.termination_logit[:, :k], out2.termination_logit[:, :k], 1e-5)
    # ... while frame k and later do change (the test could fail)
    assert not close(out.prediction[:, k], out2.prediction[:, k], 1e-3)
    assert not close(out.prediction[:, k + 1], out2.prediction[:, k + 1], 1e-3)
    assert not close(out.reward[:, k], out2.reward[:, k], 1e-3)
    # a target slot never feeds another frame: changing only target k leaves k+1 alone
    only_target = {key: value.clone() for key, value in inputs.items()}
    only_target["target_in"][:, k] += 1.0
    out3 = model(**only_target)
    assert close(out.prediction[:, k + 1 :], out3.prediction[:, k + 1 :], 1e-5)
    assert close(out.reward, out3.reward, 1e-5)


# ----- cached stepping ----------------------------------------------------------------------


def step_and_compare(model, cache, inputs, row_outputs, first: int, last: int) -> None:
    """Predict + commit frames first..last-1 of ``inputs`` over ``cache``; each must match
    ``row_outputs(p)`` = (prediction, reward, termination) of an uncached pass."""
    for p in range(first, last):
        action = inputs["incoming_actions"][:, p]
        junk = torch.randn_like(inputs["target_in"][:, p : p + 1])
        model.predict(cache, junk, inputs["target_noise"][:, p : p + 1], action)  # no effect
        prediction = model.predict(
            cache, inputs["target_in"][:, p : p + 1], inputs["target_noise"][:, p : p + 1], action
        )
        reward, termination = model.commit(
            cache, inputs["context_in"][:, p : p + 1], inputs["context_noise"][:, p : p + 1],
            action,
        )
        expected_prediction, expected_reward, expected_termination = row_outputs(p)
        assert close(prediction[:, 0], expected_prediction), f"prediction differs at {p}"
        assert close(reward, expected_reward), f"reward differs at {p}"
        assert close(termination, expected_termination), f"termination differs at {p}"


def full_pass_outputs(model: DynamicsModel, inputs: dict) -> object:
    full = model(**inputs)
    return lambda p: (full.prediction[:, p], full.reward[:, p], full.termination_logit[:, p])


def test_cached_stepping_equals_uncached_forward() -> None:
    """Exact, also long after the window started evicting frames: the uncached reference is
    the same sliding-window attention over the whole sequence (what training computes)."""
    model = random_model()
    frames = 3 * W
    inputs = random_sequence(2, frames)
    full_at = full_pass_outputs(model, inputs)
    for prompt in (1, 2, 2 * W):  # a prompt longer than the window is cut to W + 1 frames
        cache, reward, termination = model.start(
            inputs["context_in"][:, :prompt], inputs["context_noise"][:, :prompt],
            inputs["incoming_actions"][:, :prompt],
        )
        _, expected_reward, expected_termination = full_at(prompt - 1)
        assert close(reward, expected_reward) and close(termination, expected_termination)
        step_and_compare(model, cache, inputs, full_at, prompt, frames)


def test_evicted_frames_have_no_influence() -> None:
    """With one layer a frame depends on exactly its last ``W`` frames (``W + 1`` when each
    frame also embeds the one before it), so the cached step equals an uncached pass over
    only those frames (RoPE: positions differ, offsets not)."""
    model = random_model(dataclasses.replace(TINY, depth=1))
    reach = W + int(model.cfg.previous_frame)
    frames = 3 * W
    inputs = random_sequence(2, frames)
    cache, _, _ = model.start(
        inputs["context_in"][:, :1], inputs["context_noise"][:, :1],
        inputs["incoming_actions"][:, :1],
    )

    def last_window(p: int) -> tuple[torch.Tensor, ...]:
        window = {key: value[:, max(0, p - reach) : p + 1] for key, value in inputs.items()}
        out = model(**window)
        return out.prediction[:, -1], out.reward[:, -1], out.termination_logit[:, -1]

    step_and_compare(model, cache, inputs, last_window, 1, frames)
    # ... which a longer window would break (the comparison can fail)
    longer = random_model(dataclasses.replace(TINY, depth=1, context_frames=2 * W))
    longer.load_state_dict(model.state_dict())
    assert not close(model(**inputs).prediction[:, -1], longer(**inputs).prediction[:, -1], 1e-3)


def test_long_rollout_rebases_positions() -> None:
    model = random_model()
    frames = 40
    inputs = random_sequence(2, frames)
    slots = W + 1
    cache, _, _ = model.start(
        inputs["context_in"][:, :1], inputs["context_noise"][:, :1],
        inputs["incoming_actions"][:, :1], rebase_at=2 * slots,
    )
    step_and_compare(model, cache, inputs, full_pass_outputs(model, inputs), 1, frames)
    assert int(cache.next_position.max()) < 2 * slots  # positions were shifted back


def test_restart_rows_with_different_histories() -> None:
    model = random_model()
    frames = 12
    old = random_sequence(3, frames)
    new = random_sequence(1, frames)
    cache, _, _ = model.start(
        old["context_in"][:, :2], old["context_noise"][:, :2], old["incoming_actions"][:, :2]
    )
    full_old, full_new = model(**old), model(**new)
    steps_before = 4
    step_and_compare(model, cache, old, full_pass_outputs(model, old), 2, 2 + steps_before)
    rows = torch.tensor([False, True, False])
    new_prompt = 3
    reward, _ = model.restart_rows(
        cache, rows, new["context_in"][:, :new_prompt], new["context_noise"][:, :new_prompt],
        new["incoming_actions"][:, :new_prompt],
    )
    assert close(reward, full_new.reward[:, new_prompt - 1])
    assert cache.next_position.tolist() == [2 + steps_before, new_prompt, 2 + steps_before]

    # continue all rows together: row 1 follows the new episode, rows 0 and 2 the old one
    mixed = {key: old[key].clone() for key in old}
    offset = 2 + steps_before - new_prompt  # row 1 is this many frames behind the others
    for key in mixed:
        mixed[key][1, 2 + steps_before :] = new[key][0, new_prompt : frames - offset]

    def expected(p: int) -> tuple[torch.Tensor, ...]:
        q = p - offset
        pick = lambda old_value, new_value: torch.stack(  # noqa: E731
            [old_value[0, p], new_value[0, q], old_value[2, p]]
        )
        return (pick(full_old.prediction, full_new.prediction),
                pick(full_old.reward, full_new.reward),
                pick(full_old.termination_logit, full_new.termination_logit))

    step_and_compare(model, cache, mixed, expected, 2 + steps_before, frames)


def test_prompts_of_several_lengths_start_in_one_batch_as_if_alone() -> None:
    """Rows started together from prompts of different lengths (padded at the end) hold what
    each would hold started alone: the same outputs now and after further frames."""
    model = random_model()
    frames = 3 * W
    inputs = random_sequence(5, frames)
    lengths = torch.tensor([2, 2 * W, 1, W + 1, 2 * W - 1])  # short, beyond the slots, one
    padded = {key: value[:, :2 * W].clone() for key, value in inputs.items()}
    for row, length in enumerate(lengths.tolist()):  # padding is never read
        padded["context_in"][row, length:] = 1e3
    cache, reward, termination = model.start(
        padded["context_in"], padded["context_noise"], padded["incoming_actions"],
        lengths=lengths)
    full = model(**inputs)
    rows = torch.arange(5)
    assert close(reward, full.reward[rows, lengths - 1])
    assert close(termination, full.termination_logit[rows, lengths - 1])
    alone = [model.start(*(inputs[key][row:row + 1, :length] for key in
                           ("context_in", "context_noise", "incoming_actions")))[0]
             for row, length in enumerate(lengths.tolist())]
    assert close(cache.state, torch.cat([one.state for one in alone]))
    assert cache.next_position.tolist() == lengths.tolist()
    for step in range(3):  # each row goes on from its own prompt's end
        at = lengths + step
        now = {key: value[rows, at][:, None] for key, value in inputs.items()}  # (5, 1, ...)
        action = now["incoming_actions"][:, 0]
        prediction = model.predict(cache, now["target_in"], now["target_noise"], action)
        assert close(prediction[:, 0], full.prediction[rows, at]), f"differs at step {step}"
        reward, _ = model.commit(cache, now["context_in"], now["context_noise"], action)
        assert close(reward, full.reward[rows, at])
    with pytest.raises(ConfigError, match="prompt lengths"):
        model.start(padded["context_in"], padded["context_noise"], padded["incoming_actions"],
                    lengths=torch.tensor([0, 1, 1, 1, 1]))


def test_bfloat16_autocast_close_to_float32() -> None:
    model = random_model()
    inputs = random_sequence(2, 4)
    reference = model(**inputs).prediction
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = model(**inputs).prediction.float()
        cache, _, _ = model.start(
            inputs["context_in"][:, :3], inputs["context_noise"][:, :3],
            inputs["incoming_actions"][:, :3],
        )
        cached = model.predict(
            cache, inputs["target_in"][:, 3:], inputs["target_noise"][:, 3:],
            inputs["incoming_actions"][:, 3],
        ).float()
    assert cache.keys[0].dtype == torch.bfloat16
    scale = reference.abs().mean()
    assert (approx - reference).abs().mean() < 0.05 * scale
    assert (cached[:, 0] - reference[:, 3]).abs().mean() < 0.05 * scale


# ----- configs and errors -------------------------------------------------------------------


@pytest.mark.parametrize("presets", [DYNAMICS_PRESETS, AUTOENCODER_PRESETS])
def test_configs_round_trip_through_json(presets: dict) -> None:
    for cfg in presets.values():
        restored = type(cfg)(**json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert restored == cfg


def test_config_and_state_dict_rebuild_the_model() -> None:
    model = random_model()
    cfg = DynamicsConfig(**json.loads(json.dumps(dataclasses.asdict(model.cfg))))
    rebuilt = DynamicsModel(cfg).eval()
    rebuilt.load_state_dict(model.state_dict())
    inputs = random_sequence(1, 3)
    assert torch.equal(model(**inputs).prediction, rebuilt(**inputs).prediction)


def test_dynamics_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch_time"):
        DynamicsModel(dataclasses.replace(TINY, patch_time=2))
    with pytest.raises(ConfigError, match="heads"):
        DynamicsModel(dataclasses.replace(TINY, width=50, heads=4))
    model = random_model()
    inputs = random_sequence(1, 3)
    inputs["incoming_actions"][0, 1] = A + 1
    with pytest.raises(ConfigError, match="actions"):
        model(**inputs)
    with pytest.raises(ConfigError, match="latent channels"):
        model(**random_sequence(1, 3) | {"target_in": torch.randn(1, 3, C + 1, 8, 8)})
    with pytest.raises(ConfigError, match="not divisible"):
        model(**random_sequence(1, 3, 7, 8))


def test_incoming_from_transitions() -> None:
    actions = torch.tensor([[2, 0]])
    rewards = torch.tensor([[1.0, 0.5]])
    terminated = torch.tensor([[False, True]])
    incoming = incoming_from_transitions(actions, rewards, terminated, num_actions=3)
    assert incoming[0].tolist() == [[3, 2, 0]]
    assert incoming[1].tolist() == [[0.0, 1.0, 0.5]]
    assert incoming[2].tolist() == [[0.0, 0.0, 1.0]]


# ----- diffusion ----------------------------------------------------------------------------


def structured_latents(batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A blob that moves left or right by the incoming action: learnable dynamics."""
    actions = torch.randint(0, 2, (batch, frames))
    x = torch.linspace(-2, 2, 8)
    centre = torch.zeros(batch)
    latents = []
    for t in range(frames):
        centre = centre + (actions[:, t].float() * 2 - 1) * 0.5
        blob = torch.exp(-((x[None, :, None] - centre[:, None, None]) ** 2 + x[None, None] ** 2))
        latents.append(torch.stack([blob * (k + 1) - 0.5 for k in range(C)], dim=1))
    return torch.stack(latents, dim=1), actions  # (B, T, c, h, w), (B, T)


def test_edm_loss_decreases_on_tiny_overfit() -> None:
    model = DynamicsModel(TINY)
    denoiser = Denoiser(model, DenoiserConfig())
    objective = EDMObjective()
    latents, actions = structured_latents(4, 4)
    rewards = torch.rand(4, 4)
    terminated = torch.zeros(4, 4)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=3e-3)

    def loss() -> tuple[torch.Tensor, dict]:
        generator = torch.Generator().manual_seed(1)  # same noise every step: an overfit
        return objective.loss(denoiser, latents, actions, rewards, terminated, None, generator)

    initial, metrics = loss()
    assert set(metrics) == {"loss", "loss_denoise", "loss_reward", "loss_termination"}
    for _ in range(40):
        value, _ = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    final, _ = loss()
    assert final.item() < 0.5 * initial.item()


def test_edm_loss_ignores_invalid_frames() -> None:
    denoiser = Denoiser(random_model(), DenoiserConfig())
    latents, actions = structured_latents(2, 4)
    valid = torch.tensor([[True, True, False, False]] * 2)
    spoiled = latents.clone()
    spoiled[:, 2:] = 100.0

    def loss(x: torch.Tensor, mask: torch.Tensor | None) -> float:
        generator = torch.Generator().manual_seed(0)
        return EDMObjective().loss(denoiser, x, actions, valid=mask, generator=generator)[0].item()

    assert loss(latents, valid) == pytest.approx(loss(spoiled, valid), rel=1e-5)
    assert loss(latents, None) != pytest.approx(loss(spoiled, None), rel=1e-2)


def confident_heads(denoiser: Denoiser) -> Denoiser:
    """The heads' zero-initialised outputs moved off 0 (a 0 logit costs log 2 either way)."""
    with torch.no_grad():
        denoiser.model.termination_head.mlp[-1].bias.fill_(-3.0)
        denoiser.model.reward_head.mlp[-1].bias.fill_(1.0)
    return denoiser


def test_edm_loss_weights_every_term_by_row_importance() -> None:
    """Oversampled episode ends are weighted back in the heads' losses too, or the
    termination head learns the oversampled rate (dreams then die far too often)."""
    denoiser = confident_heads(Denoiser(random_model(), DenoiserConfig()))
    latents, actions = structured_latents(2, 4)
    rewards = torch.zeros(2, 4)
    ends = torch.zeros(2, 4)
    ended = ends.clone()
    ended[1, -1] = 1.0  # row 1 is an oversampled end segment

    def metrics(terminated: torch.Tensor, reward: torch.Tensor,
                weights: torch.Tensor) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return EDMObjective().loss(denoiser, latents, actions, reward, terminated, None,
                                   generator, row_weights=weights)[1]

    zero_for_row_1 = torch.tensor([1.0, 0.0])
    for key, changed in (("loss_termination", (ended, rewards)),
                         ("loss_reward", (ends, rewards + ended * 5))):
        base = metrics(ends, rewards, zero_for_row_1)[key]
        assert metrics(*changed, zero_for_row_1)[key] == pytest.approx(base.item(), rel=1e-6)
        assert metrics(*changed, torch.ones(2))[key] > base.item() + 0.1


def test_edm_loss_can_leave_the_heads_unweighted() -> None:
    denoiser = confident_heads(Denoiser(random_model(), DenoiserConfig()))
    latents, actions = structured_latents(2, 4)
    ends = torch.zeros(2, 4)
    ended = ends.clone()
    ended[1, -1] = 1.0

    def loss_termination(terminated: torch.Tensor) -> float:
        objective = EDMObjective(weight_heads=False)
        return objective.loss(denoiser, latents, actions, None, terminated, None,
                              torch.Generator().manual_seed(0),
                              row_weights=torch.tensor([1.0, 0.0]))[1]["loss_termination"].item()

    assert loss_termination(ended) > loss_termination(ends) + 0.1


def test_change_weights_single_out_the_cells_that_change() -> None:
    latents = torch.zeros(1, 3, C, 8, 8)
    latents[0, 1, :, 2, 3] = 1.0  # appears in frame 1, gone again in frame 2
    weights = change_weights(latents, 10.0)
    assert weights.shape == (1, 3, 1, 8, 8)
    assert torch.equal(weights[0, 0], torch.ones(1, 8, 8))  # frame 0 has no past
    for frame in (1, 2):
        assert weights[0, frame, 0, 2, 3] == pytest.approx(11.0)
        others = torch.ones(8, 8, dtype=torch.bool)
        others[2, 3] = False
        assert torch.equal(weights[0, frame, 0][others], torch.ones(63))


def test_edm_loss_change_weight_leaves_still_scenes_alone_and_moves_moving_ones() -> None:
    denoiser = Denoiser(random_model(), DenoiserConfig())
    moving, actions = structured_latents(2, 4)
    still = moving[:, :1].expand_as(moving).contiguous()

    def loss(latents: torch.Tensor, change_weight: float) -> float:
        objective = EDMObjective(change_weight=change_weight)
        return objective.loss(denoiser, latents, actions,
                              generator=torch.Generator().manual_seed(0))[0].item()

    assert loss(still, 10.0) == pytest.approx(loss(still, 0.0), rel=1e-6)
    assert loss(moving, 10.0) != pytest.approx(loss(moving, 0.0), rel=1e-3)
    with pytest.raises(ConfigError, match=r"change_weight \(--change-weight\) must be 0 or more"):
        EDMObjective(change_weight=-1.0)


@pytest.mark.parametrize("steps,order", [(1, 1), (2, 1), (2, 2)])
def test_sampler_shape_and_temperature(steps: int, order: int) -> None:
    denoiser = Denoiser(random_model(), DenoiserConfig())
    latents, actions = structured_latents(3, 3)
    state, _, _ = denoiser.start(latents, actions)
    sampler = EDMSampler(denoise_steps=steps, order=order, temperature=0.0)
    first = sampler.sample(denoiser, state, actions[:, -1])
    assert first.shape == (3, 1, C, 8, 8)
    assert torch.equal(first, sampler.sample(denoiser, state, actions[:, -1]))  # deterministic
    hot = dataclasses.replace(sampler, temperature=1.0)
    one = hot.sample(denoiser, state, actions[:, -1], torch.Generator().manual_seed(1))
    two = hot.sample(denoiser, state, actions[:, -1], torch.Generator().manual_seed(2))
    assert not torch.equal(one, two)
    again = hot.sample(denoiser, state, actions[:, -1], torch.Generator().manual_seed(1))
    assert torch.equal(one, again)
    reward, termination = denoiser.commit(state, first, actions[:, -1])
    assert reward.shape == termination.shape == (3,)
    assert state.next_position.tolist() == [4, 4, 4]


def test_one_step_sampler_is_the_denoiser_at_sigma_max() -> None:
    denoiser = Denoiser(random_model(), DenoiserConfig())
    latents, actions = structured_latents(2, 3)
    state, _, _ = denoiser.start(latents, actions)
    sampler = EDMSampler(denoise_steps=1, temperature=0.0)
    sample = sampler.sample(denoiser, state, actions[:, -1])
    direct = denoiser.denoise(state, torch.zeros_like(sample), sampler.sigma_max, actions[:, -1])
    assert torch.allclose(sample, direct, atol=1e-6)
    sigmas = EDMSampler(denoise_steps=3).sigmas()
    assert sigmas[0] == pytest.approx(5.0) and sigmas[-2] == pytest.approx(2e-3)
    assert sigmas[-1] == 0.0 and len(sigmas) == 4


def test_action_guidance_extrapolates_from_the_action_free_estimate() -> None:
    denoiser = Denoiser(random_model(), DenoiserConfig())
    latents, actions = structured_latents(2, 3)
    state, _, _ = denoiser.start(latents, actions)
    action, unknown = actions[:, -1] % A, torch.full((2,), A)
    zeros = torch.zeros(2, 1, C, 8, 8)

    def one_step(guidance: float, taken: torch.Tensor) -> torch.Tensor:
        sampler = EDMSampler(denoise_steps=1, temperature=0.0, action_guidance=guidance)
        return sampler.sample(denoiser, state, taken)

    with_action = denoiser.denoise(state, zeros, 5.0, action)
    free = denoiser.denoise(state, zeros, 5.0, unknown)
    assert not torch.allclose(with_action, free, atol=1e-4)  # the action matters here
    assert torch.allclose(one_step(1.0, action), with_action, atol=1e-6)
    assert torch.allclose(one_step(3.0, action), free + 3 * (with_action - free), atol=1e-5)
    assert torch.allclose(one_step(0.0, action), one_step(0.0, (action + 1) % A), atol=1e-6)
    with pytest.raises(ConfigError, match="action_guidance must be >= 0"):
        with_sampler_settings(EDMSampler(), {"action_guidance": -1.0})


def test_residual_denoiser_learns_the_change_and_steps_add_it() -> None:
    from worldsim.config import preset
    from worldsim.diffusion.edm import residual_base
    from worldsim.world_model import WorldModel, WorldModelInfo

    latents, actions = structured_latents(2, 4)
    plain = Denoiser(random_model(), DenoiserConfig())
    residual = Denoiser(plain.model, DenoiserConfig(residual=True))
    assert torch.equal(residual_base(plain, latents), torch.zeros_like(latents[:, :1]))
    assert torch.equal(residual_base(residual, latents)[:, 1:], latents[:, :-1])
    # a video that never changes: the residual objective's clean targets are all zero, so
    # it differs from the plain objective on it
    still = latents[:, :1].expand(-1, 4, -1, -1, -1).contiguous()
    losses = [EDMObjective().loss(d, still, actions, generator=torch.Generator().manual_seed(0))
              [0].item() for d in (plain, residual)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)

    # stepping: the same network, residual or not, samples the same thing; the residual
    # model adds it to each dream's current frame
    models = []
    for flag in (False, True):
        config = preset("tiny", num_actions=3)
        config.denoiser.residual = flag
        models.append(WorldModel(config, WorldModelInfo(frame_size=(32, 32))).eval())
    models[1].load_state_dict(models[0].state_dict())
    frames = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    steps = []
    for model in models:
        state = model.start(frames, torch.zeros(2, 2, dtype=torch.long))
        current = state.latents.clone()
        steps.append(model.step(state, torch.ones(2, dtype=torch.long),
                                torch.Generator().manual_seed(0)).latents)
    assert torch.allclose(steps[1], steps[0] + current, atol=1e-6)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_blocks_step_like_eager_ones() -> None:
    from worldsim.config import preset
    from worldsim.world_model import WorldModel, WorldModelInfo

    model = WorldModel(preset("tiny", num_actions=3), WorldModelInfo(frame_size=(32, 32))).eval()
    frames = torch.randint(0, 256, (3, 2, 3, 32, 32), dtype=torch.uint8)
    keys = list(model.state_dict())

    def rollout() -> torch.Tensor:
        state = model.start(frames, torch.zeros(3, 1, dtype=torch.long))
        generator = torch.Generator().manual_seed(0)
        out = []
        for t in range(12):  # past the window: the masked and the unmasked passes
            out.append(model.step(state, torch.full((3,), t % 3), generator).latents)
            if t == 5:  # a restart of some rows: a new batch shape through the blocks
                model.restart(state, torch.tensor([True, False, True]), frames[:2],
                              torch.zeros(2, 1, dtype=torch.long))
        return torch.stack(out)

    eager = rollout()
    assert model.compile_blocks() is model
    assert list(model.state_dict()) == keys  # checkpoints are unchanged
    assert torch.allclose(rollout(), eager, atol=1e-4)
