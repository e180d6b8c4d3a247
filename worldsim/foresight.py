"""Give a trained world model a foresight head: the chance that the next step ends the episode.

A world model's termination head reads the frame a step *drew*: in a dream, a death shows
only if the drawn frame still holds its cause (the fireball about to hit). The model's state
after a real frame knows more than its drawn frames keep (``benchmarks.foresight``: a
read-out of the state ranks coming deaths far better than the dream does). The foresight
head reads that state before the next frame is drawn: from the newest frame's tokens, one
logit per action that taking it ends the episode. Dreams can then end by it
(``DreamEnv(ends="foresight")``, the default for a model that has one) and a planner can
weigh actions by it.

:func:`train_foresight` fits the head to a trained, frozen model: every frame of the
dataset's episodes goes through the model with the real frames fed in (as a dream that
draws exactly the game's frames), the pooled tokens the head reads are kept, and the head
is fitted to "the step after this frame, with the action the game took, ended the episode"
(calibrated: the data's own odds), stopping where a held-out share of the episodes stops
improving. The other weights are unchanged; the result is a new checkpoint.

    worldsim train-foresight --checkpoint takecover --data data/takecover-skip4 \\
        --out runs/takecover-foresight
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim.data import EpisodeDataset
from worldsim.errors import ConfigError
from worldsim.metrics import roc_auc
from worldsim.models.dit import ForesightHead
from worldsim.utils import machine_info
from worldsim.world_model import WorldModel


@dataclass
class FrameStates:
    """The model's pooled state after every frame that an action follows."""

    states: torch.Tensor  # (N, D) mean of the last-layer tokens of frame t
    actions: torch.Tensor  # (N,) the action the game took after frame t
    ends: torch.Tensor  # (N,) 1.0 where that step ended the episode


@torch.no_grad()
def frame_states(model: WorldModel, dataset: EpisodeDataset, batch: int = 64,
                 precision: str = "bf16", progress: bool = True) -> FrameStates:
    """Run every episode through ``model`` with its real frames (``batch`` episodes at a
    time, the model's context window as in a dream) and keep the pooled state the
    foresight head reads after each frame ``t`` that an action follows."""
    order = np.argsort([entry.length for entry in dataset.entries], kind="stable")
    states, actions, ends = [], [], []
    bar = tqdm(total=dataset.num_frames, desc="states", unit="frame", disable=not progress)
    for first in range(0, len(order), batch):
        group = [int(p) for p in order[first:first + batch]]
        episodes = [dataset.episode(p) for p in group]
        lengths = [len(e.actions) for e in episodes]
        longest = max(lengths)
        latents = torch.stack([_padded(model.encode_episode(e.frames), longest + 1)
                               for e in episodes])  # (B, T + 1, c, h, w)
        taken = torch.stack([_padded(torch.as_tensor(e.actions, dtype=torch.long), longest)
                             for e in episodes])  # (B, T)
        stacked = teacher_forced_states(model, latents, taken, precision)  # (B, T, D)
        for row, (episode, length) in enumerate(zip(episodes, lengths, strict=True)):
            states.append(stacked[row, :length])
            actions.append(taken[row, :length])
            end = torch.zeros(length)
            end[-1] = float(bool(episode.terminated[-1]))
            ends.append(end)
        bar.update(sum(lengths) + len(lengths))
    bar.close()
    return FrameStates(torch.cat(states), torch.cat(actions), torch.cat(ends))


@torch.no_grad()
def teacher_forced_states(model: WorldModel, latents: torch.Tensor, actions: torch.Tensor,
                          precision: str = "bf16") -> torch.Tensor:
    """The model's state ``(B, T, D)`` after each frame ``t = 0 .. T-1`` of latent episodes
    ``(B, T + 1, c, h, w)`` played with ``actions`` ``(B, T)``, the real frames fed in (a
    dream that draws exactly the game's frames), on the CPU."""
    with model.autocast(precision):
        state = model.start(latents[:, :1], actions[:, :0], latents=True)
        after = [model.features(state).cpu()]
        for t in range(1, actions.shape[1]):
            model.observe(state, latents[:, t], actions[:, t - 1], latents=True)
            after.append(model.features(state).cpu())
    return torch.stack(after, dim=1)


def _padded(values: torch.Tensor, length: int) -> torch.Tensor:
    """``values`` ``(T, ...)`` padded to ``length`` rows by repeating the last one."""
    extra = length - values.shape[0]
    return torch.cat([values, values[-1:].expand(extra, *values.shape[1:])]) if extra > 0 \
        else values


def fit_head(head: ForesightHead, fitted: FrameStates, held: FrameStates, epochs: int = 40,
             batch: int = 512, lr: float = 1e-3, weight_decay: float = 1e-2, patience: int = 5,
             seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit ``head`` in place on ``fitted``, keeping the weights of the epoch with the lowest
    loss on ``held``. Returns the held-out figures."""
    if not len(held.ends) or not bool(fitted.ends.any()):
        raise ConfigError("the foresight head needs episodes that end on both sides of the "
                          "held-out split; use a dataset with more ended episodes")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_epoch, best_state = float("inf"), 0, None
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="foresight head", unit="epoch",
                      disable=not progress):
        head.train()
        for chunk in torch.randperm(len(fitted.ends), generator=generator).split(batch):
            optimizer.zero_grad()
            head_loss(head, fitted, chunk).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            loss = float(head_loss(head, held, torch.arange(len(held.ends))))
        history.append(round(loss, 6))
        if loss < best:
            best, best_epoch = loss, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    assert best_state is not None
    head.load_state_dict(best_state)
    with torch.no_grad():
        chosen = torch.sigmoid(head.read(held.states).gather(1, held.actions[:, None])[:, 0])
    chosen, labels = chosen.numpy(), held.ends.numpy().astype(bool)
    auc = roc_auc(labels, chosen)
    return {"held_out_loss": round(best, 6), "best_epoch": best_epoch, "epochs_run": len(history),
            "held_out_loss_per_epoch": history,
            "held_out_auc": None if auc is None else round(auc, 4),
            "held_out_steps": len(labels), "held_out_ends": int(labels.sum()),
            "mean_probability": round(float(chosen.mean()), 6),
            "end_rate": round(float(labels.mean()), 6)}


def head_loss(head: ForesightHead, data: FrameStates, rows: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the head's logit for the action taken, on ``rows``."""
    logits = head.read(data.states[rows]).gather(1, data.actions[rows, None])[:, 0]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, data.ends[rows])


def train_foresight(checkpoint: str | Path, data: str | Path, out: str | Path,
                    holdout: float = 0.1, episodes: int | None = None, epochs: int = 40,
                    batch: int = 64, precision: str = "bf16", seed: int = 0,
                    dtype: torch.dtype | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit a foresight head to the frozen model ``checkpoint`` on the dataset ``data``
    (its last ``holdout`` share of episodes held out, as in `worldsim train`) and write the
    model with the head to ``out``. Returns what was done and the held-out figures (also
    saved in the checkpoint's ``info.trained["foresight"]``).

    Args:
        checkpoint: the world model (run folder, file or shipped name).
        data: a dataset of the model's env, from `worldsim collect`.
        out: where to write the new checkpoint (a folder or ``.safetensors`` file).
        holdout: share of the episodes held out to stop the fit and to score it.
        episodes: use only the first N episodes of each side of the split (quick runs).
        epochs: most passes over the states.
        batch: episodes run through the model at once.
        precision: the model's inference precision for the states (as dreams use).
        seed: order of the fit's minibatches.
        dtype: store the floating-point weights in this type (float16 halves a shipped file).
    """
    started = time.perf_counter()
    model = WorldModel.load(checkpoint)
    if not model.info.env:
        raise ConfigError(f"{checkpoint} does not say which env it was trained on; the "
                          "foresight head is fitted on a dataset of that env")
    dataset = EpisodeDataset(data, env=model.info.env, frame_size=model.info.frame_size,
                             num_actions=model.num_actions)
    if epochs < 1 or batch < 1:
        raise ConfigError(f"epochs and batch must be at least 1, got {epochs} and {batch}")
    fitting, held = dataset.split(holdout)
    if episodes is not None:
        if episodes < 1:
            raise ConfigError(f"episodes must be at least 1, got {episodes}")
        fitting = fitting.subset(range(min(episodes, len(fitting))))
        held = held.subset(range(min(max(1, episodes // 9), len(held))))
    fitted_states = frame_states(model, fitting, batch, precision, progress)
    held_states = frame_states(model, held, batch, precision, progress)
    dynamics = model.denoiser.model
    model.config.dynamics.foresight_head = True
    torch.manual_seed(seed)
    dynamics.foresight_head = ForesightHead(model.config.dynamics.width, model.num_actions)
    figures = fit_head(dynamics.foresight_head, fitted_states, held_states, epochs=epochs,
                       seed=seed, progress=progress)
    record = {"checkpoint": str(checkpoint), "data": str(data),
              "episodes_fitted": len(fitting.entries), "episodes_held_out": len(held.entries),
              "steps_fitted": len(fitted_states.ends), "precision": precision, "seed": seed,
              **figures, "wall_seconds": round(time.perf_counter() - started, 1),
              "machine": machine_info()}
    model.info.trained["foresight"] = record
    model.save(out, dtype=dtype)
    return record
