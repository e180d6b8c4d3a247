"""Give a trained world model a foresight head (the chance that the next step ends the
episode) or a hold head (which held action survives the next steps).

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

The hold head answers what a player needs from the same state: for every action, the chance
that *holding* it for the next H steps ends the episode within them. Behaviour data shows
each state under one action; a dataset with branches (`worldsim collect --branch-steps H`)
holds, from many states, every action held for H steps in the replayed game, so each such
state says which moves die and which survive. :func:`branch_states` reads the model's state
at those states (the main episode through the model, real frames fed in) and
:func:`fit_hold_head` fits the head to the fates (held-out figures: how often its safest
action survives, as ``benchmarks.dodge`` scores dreams). A planner reads it with no dream
drawn (``plan:MODEL,search=head``)::

    worldsim train-foresight --hold --checkpoint runs/takecover-foresight \\
        --data data/takecover-branches --out runs/takecover-hold

A head fitted at real states only ranks the moves worse once a dream has drawn a frame
(``benchmarks.dodge --drawn-steps``): the drawn state is not one it has seen. With
``--drawn-steps K ...`` it is also fitted at the states a dream reaches at the same branching
states after drawing the last K frames itself (:func:`drawn_states`), with the same fates,
so that dreams ended by it (``ends="hold"``) and agents reading it keep its ranking.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from worldsim.data import Episode, EpisodeDataset, parse_branch_filename
from worldsim.diffusion.edm import EDMSampler
from worldsim.errors import ConfigError
from worldsim.metrics import dodge_figures, roc_auc
from worldsim.models.dit import ForesightHead, HoldHead
from worldsim.noise import NoiseStreams
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
    states, actions, ends = [], [], []
    for _, episode, stacked, _ in episode_states(model, dataset, range(len(dataset)), batch,
                                                 precision, progress):
        length = len(episode.actions)
        states.append(model.pool(stacked))  # the foresight head reads the tokens' mean
        actions.append(torch.as_tensor(episode.actions, dtype=torch.long))
        end = torch.zeros(length)
        end[-1] = float(bool(episode.terminated[-1]))
        ends.append(end)
    return FrameStates(torch.cat(states), torch.cat(actions), torch.cat(ends))


def episode_states(model: WorldModel, dataset: EpisodeDataset, positions: Iterable[int],
                   batch: int = 64, precision: str = "bf16", progress: bool = True
                   ) -> Iterator[tuple[int, Episode, torch.Tensor, torch.Tensor]]:
    """``(position, episode, states (T, D), latents (T + 1, c, h, w))`` for the episodes at
    ``positions`` of ``dataset``: each run through ``model`` with its real frames, ``batch``
    episodes of similar length at a time (:func:`teacher_forced_states`)."""
    chosen = list(positions)
    order = sorted(chosen, key=lambda p: dataset.entries[p].length)
    bar = tqdm(total=sum(dataset.entries[p].length + 1 for p in chosen), desc="states",
               unit="frame", disable=not progress)
    for first in range(0, len(order), batch):
        group = order[first:first + batch]
        episodes = [dataset.episode(p) for p in group]
        lengths = [len(e.actions) for e in episodes]
        longest = max(lengths)
        latents = torch.stack([_padded(model.encode_episode(e.frames), longest + 1)
                               for e in episodes])  # (B, T + 1, c, h, w)
        taken = torch.stack([_padded(torch.as_tensor(e.actions, dtype=torch.long), longest)
                             for e in episodes])  # (B, T)
        stacked = teacher_forced_states(model, latents, taken, precision)  # (B, T, D)
        for row, (position, episode) in enumerate(zip(group, episodes, strict=True)):
            yield position, episode, stacked[row, :lengths[row]], \
                latents[row, :lengths[row] + 1].cpu()
        bar.update(sum(lengths) + len(lengths))
    bar.close()


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


def drawn_window(latents: torch.Tensor, actions: torch.Tensor, t: int, k: int, context: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a dream needs to draw frames ``t - k + 1 .. t`` of a real episode itself:
    the prompt (the real latents up to ``t - k``, at most ``context`` of them), the actions
    between them, and the ``k`` actions really played from ``t - k`` on."""
    start = t - k
    if start < 0:
        raise ValueError(f"state {t} has fewer than {k} frames before it")
    low = max(0, start - context + 1)
    return latents[low:start + 1], actions[low:start], actions[start:t]


@torch.no_grad()
def drawn_states(model: WorldModel, prompts: torch.Tensor, prompt_actions: torch.Tensor,
                 drawn: torch.Tensor, noise: NoiseStreams, sampler: EDMSampler | None = None,
                 precision: str = "bf16") -> torch.Tensor:
    """The model's state ``(B, D)`` (float32, CPU) after dreams prompted with latents
    ``prompts`` ``(B, P, c, h, w)`` (``prompt_actions`` ``(B, P - 1)`` between them) drew
    ``K`` frames themselves under ``drawn`` ``(B, K)``: where a dream stands after K steps,
    for the head to be read (or fitted) there."""
    with model.autocast(precision):
        state = model.start(prompts, prompt_actions, latents=True)
        for step in range(drawn.shape[1]):
            model.step(state, drawn[:, step], noise, sampler)
        return model.features(state).float().cpu()


def fit_head(head: ForesightHead, fitted: FrameStates, held: FrameStates, epochs: int = 40,
             batch: int = 512, lr: float = 1e-3, weight_decay: float = 1e-2, patience: int = 5,
             seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit ``head`` in place on ``fitted``, keeping the weights of the epoch with the lowest
    loss on ``held``. Returns the held-out figures."""
    if not len(held.ends) or not bool(fitted.ends.any()):
        raise ConfigError("the foresight head needs episodes that end on both sides of the "
                          "held-out split; use a dataset with more ended episodes")
    figures = fit_best(head, lambda rows: head_loss(head, fitted, rows), len(fitted.ends),
                       lambda: head_loss(head, held, torch.arange(len(held.ends))),
                       "foresight head", epochs, batch, lr, weight_decay, patience, seed,
                       progress)
    with torch.no_grad():
        chosen = torch.sigmoid(head.read(held.states).gather(1, held.actions[:, None])[:, 0])
    chosen, labels = chosen.numpy(), held.ends.numpy().astype(bool)
    auc = roc_auc(labels, chosen)
    return {**figures, "held_out_auc": None if auc is None else round(auc, 4),
            "held_out_steps": len(labels), "held_out_ends": int(labels.sum()),
            "mean_probability": round(float(chosen.mean()), 6),
            "end_rate": round(float(labels.mean()), 6)}


def fit_best(head: torch.nn.Module, loss: Callable[[torch.Tensor], torch.Tensor], rows: int,
             held_loss: Callable[[], torch.Tensor], name: str, epochs: int, batch: int,
             lr: float, weight_decay: float, patience: int, seed: int, progress: bool
             ) -> dict[str, Any]:
    """Fit ``head`` in place by AdamW on minibatches of ``rows`` examples (``loss(rows)``),
    keeping the weights of the epoch with the lowest ``held_loss()``, stopping ``patience``
    epochs after it."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_epoch, best_state = float("inf"), 0, None
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc=name, unit="epoch", disable=not progress):
        head.train()
        for chunk in torch.randperm(rows, generator=generator).split(batch):
            optimizer.zero_grad()
            loss(chunk).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            value = float(held_loss())
        history.append(round(value, 6))
        if value < best:
            best, best_epoch = value, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    if best_state is None:
        raise ConfigError(f"the {name}'s held-out loss was never a number (the fit diverged); "
                          "try a lower learning rate or more data")
    head.load_state_dict(best_state)
    return {"held_out_loss": round(best, 6), "best_epoch": best_epoch,
            "epochs_run": len(history), "held_out_loss_per_epoch": history}


def head_loss(head: ForesightHead, data: FrameStates, rows: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the head's logit for the action taken, on ``rows``."""
    logits = head.read(data.states[rows]).gather(1, data.actions[rows, None])[:, 0]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, data.ends[rows])


@dataclass
class BranchStates:
    """The model's pooled state at each branching state, and each action's held fate."""

    states: torch.Tensor  # (N, D) state after the frame the branches start from
    ends: torch.Tensor  # (N, A) 1.0 where holding action a ended the episode within the steps
    episodes: torch.Tensor  # (N,) the episode number of each state
    # (N,) 0 for the state reached over real frames; K for the state a dream reached after
    # drawing the last K frames itself (the same branching state, the same fates)
    drawn: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.drawn is None:
            self.drawn = torch.zeros(len(self.ends), dtype=torch.long)

    def rows(self, keep: torch.Tensor) -> BranchStates:
        """The rows where ``keep`` ``(N,)`` bool is true."""
        assert self.drawn is not None
        return BranchStates(self.states[keep], self.ends[keep], self.episodes[keep],
                            self.drawn[keep])


def branch_fates(dataset: EpisodeDataset) -> dict[int, dict[int, dict[int, bool]]]:
    """``{episode: {t: {action: ended}}}`` from the dataset's branch files (recorded by
    `worldsim collect --branch-steps`): whether holding the action from the episode's state
    ``t`` ended the episode (rather than running out of steps)."""
    fates: dict[int, dict[int, dict[int, bool]]] = {}
    for entry in dataset.entries:
        found = parse_branch_filename(entry.file)
        if found is not None:
            index, t, action = found
            fates.setdefault(index, {}).setdefault(t, {})[action] = bool(entry.terminated)
    return fates


def is_decisive(fates: dict[int, bool]) -> bool:
    """Whether a branched state's moves' fates (``{action: ended}``) differ: some held move
    ends the episode and another survives, so the choice matters there."""
    return len(set(fates.values())) > 1


HOLD_FATES = ("end", "hit")  # what a hold head's risk is the chance of (see branch_states)
_FATE_KEYS = {"end": "branch_fates", "hit": "branch_hits"}  # where episodes keep them


def recorded_fates(episode: Episode, name: str = "", fate: str = "end"
                   ) -> dict[int, dict[int, bool]]:
    """``{t: {action: ended}}`` (or with ``fate="hit"``, ``{t: {action: hit}}``) for every
    state a collection with branches examined in ``episode``, decisive or not (kept in its
    metadata by `worldsim collect --branch-steps`)."""
    kept = episode.metadata.get(_FATE_KEYS[fate])
    if kept is None:
        what = "fates of every examined state" if fate == "end" else "hits of its branches"
        raise ConfigError(f"episode {name or episode.metadata.get('index')} keeps no {what} "
                          "(recorded before they were kept, or by a game that reports no "
                          "health); record the dataset again with `worldsim collect "
                          "--branch-steps 8` into a new folder"
                          + (", or fit at decisive states only (leave out --every-state)"
                             if fate == "end" else ", or fit --fate end"))
    return {int(t): dict(enumerate(map(bool, ended))) for t, ended in kept.items()}


@torch.no_grad()
def branch_states(model: WorldModel, dataset: EpisodeDataset, batch: int = 64,
                  precision: str = "bf16", progress: bool = True,
                  drawn_steps: Sequence[int] = (), seed: int = 0,
                  every_state: bool = False, drawn_share: float = 1.0,
                  fate: str = "end") -> BranchStates:
    """The model's state at every state of ``dataset`` that all actions branch from (the
    main episode run through the model with its real frames, as :func:`frame_states`), with
    each action's fate. States missing a branch of some action are skipped. With
    ``every_state``: at every state the collection examined, decisive or not, from the
    fates each episode keeps (:func:`recorded_fates`), so the head learns how likely each
    held action is to die anywhere, not only which one dies where their fates differ.

    ``fate``: ``"end"``, whether holding the action ended the episode; ``"hit"``, whether it
    lost health or ended (kept by collections of a game that reports health): the states
    where the moves' hits differ are then the decisive ones. A hit is decided by what the
    frames show (the fireball), a death also by the health TakeCover does not draw.

    ``drawn_steps``: also, for each ``K``, the state a dream reaches at the same branching
    state after drawing its last ``K`` frames itself (prompted with the real frames before
    them, stepped with the actions really played, the model's own sampler, noise seeded
    from ``seed``, the episode and the step), paired with the same fates (``drawn`` = K;
    states with fewer than K frames before them are skipped): what the head meets in a
    dream. ``drawn_share``: draw only this share of the states (picked by the same seed),
    each costing K model steps."""
    if fate not in HOLD_FATES:
        raise ConfigError(f"a hold head's fate must be one of {', '.join(HOLD_FATES)}, got "
                          f"{fate!r}")
    kept = every_state or fate != "end"  # read from the episodes' metadata
    fates = {} if kept else branch_fates(dataset)
    mains = {entry.index: position for position, entry in enumerate(dataset.entries)
             if (kept or entry.index in fates) and parse_branch_filename(entry.file) is None}
    states, ends, episodes, drawn = [], [], [], []
    context = model.config.dynamics.context_frames
    jobs: dict[tuple[int, int], list[tuple[Any, ...]]] = {}  # (K, prompt length): windows
    for position, episode, stacked, latents in episode_states(model, dataset, mains.values(),
                                                              batch, precision, progress):
        index = dataset.entries[position].index
        taken = torch.as_tensor(episode.actions, dtype=torch.long)
        by_state = recorded_fates(episode, dataset.entries[position].file, fate) if kept \
            else fates[index]
        if not every_state:  # the decisive states only
            by_state = {t: by for t, by in by_state.items() if is_decisive(by)}
        for t, by_action in sorted(by_state.items()):
            if len(by_action) == model.num_actions and t < len(stacked):
                outcome = [float(by_action[a]) for a in range(model.num_actions)]
                states.append(stacked[t])
                ends.append(outcome)
                episodes.append(index)
                drawn.append(0)
                for k in (k for k in drawn_steps if t >= k):
                    seed_of = ((seed * 1_000_003 + index) * 100_003 + t) * 101 + k
                    if drawn_share < 1 and random.Random(seed_of).random() >= drawn_share:
                        continue
                    window = drawn_window(latents, taken, t, k, context)
                    jobs.setdefault((k, len(window[0])), []).append(
                        (*window, seed_of, outcome, index))
    if not states:
        raise ConfigError(f"{dataset.root} holds no state with a branch of every action; "
                          "record branches with `worldsim collect --branch-steps 8`")
    bar = tqdm(total=sum(len(rows) for rows in jobs.values()), desc="drawn states",
               unit="state", disable=not progress or not jobs)
    for (k, _), rows in sorted(jobs.items()):
        for first in range(0, len(rows), batch):
            group = rows[first:first + batch]
            prompts, prompt_actions, actions, seeds, outcomes, index = zip(*group, strict=True)
            noise = NoiseStreams.seeded(list(seeds), model.device)
            states.extend(drawn_states(model, torch.stack(prompts), torch.stack(prompt_actions),
                                       torch.stack(actions), noise, precision=precision))
            ends.extend(outcomes)
            episodes.extend(index)
            drawn.extend([k] * len(group))
            bar.update(len(group))
    bar.close()
    return BranchStates(torch.stack(states), torch.tensor(ends), torch.tensor(episodes),
                        torch.tensor(drawn, dtype=torch.long))


def fit_hold_head(head: HoldHead, fitted: BranchStates, held: BranchStates, epochs: int = 100,
                  batch: int = 128, lr: float = 1e-3, weight_decay: float = 0.1,
                  patience: int = 10, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit ``head`` in place on ``fitted`` (its input standardised by the mean and spread
    of their states reached over real frames), keeping the epoch with the lowest loss on
    ``held``; each of an ensemble's members in turn, from seed ``seed + k``. Returns the
    held-out figures: loss and :func:`worldsim.metrics.dodge_figures` of the head's risks at
    the real states, and under ``drawn`` (when ``held`` has drawn rows) the same per number
    of drawn frames; an ensemble's also each member's under ``member_figures``."""
    if not len(held.ends) or not len(fitted.ends):
        raise ConfigError(f"the hold head needs branching states on both sides of the "
                          f"held-out split ({len(fitted.ends)} fitted, {len(held.ends)} held "
                          "out); record branches for more episodes")
    assert fitted.drawn is not None and held.drawn is not None
    real = fitted.states[fitted.drawn == 0]
    spread = real.std(dim=0, correction=0)
    head.mean.copy_(real.mean(dim=0))
    head.std.copy_(torch.where(spread > 1e-6, spread, torch.ones_like(spread)))

    def loss(read: Callable[[torch.Tensor], torch.Tensor], data: BranchStates,
             rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(read(data.states[rows]),
                                                                    data.ends[rows])

    def scored(part: BranchStates, read: Callable[[torch.Tensor], torch.Tensor]
               ) -> dict[str, Any]:
        with torch.no_grad():
            risk = torch.sigmoid(read(part.states)).numpy()
        # calibration over every state fitted (at decisive states only: their own share)
        return {**dodge_figures(part.ends.numpy() == 0, risk),
                "mean_risk": round(float(risk.mean()), 4),
                "end_share": round(float(part.ends.mean()), 4)}

    every = torch.arange(len(held.ends))
    real_held = held.rows(held.drawn == 0)
    single = len(head.members) == 1

    def fit_member(k: int, member: torch.nn.Module) -> dict[str, Any]:
        def read(states: torch.Tensor) -> torch.Tensor:
            return member(head.standardise(states))

        figures = fit_best(member, lambda rows: loss(read, fitted, rows), len(fitted.ends),
                           lambda: loss(read, held, every),
                           "hold head" if single else f"hold head {k + 1}", epochs, batch, lr,
                           weight_decay, patience, seed + k, progress)
        return figures if single else {**figures, **scored(real_held, read)}

    members = [fit_member(k, member) for k, member in enumerate(head.members)]
    figures = members[0]
    head.eval()
    if not single:
        with torch.no_grad():
            figures = {"held_out_loss": round(float(loss(head.read, held, every)), 6),
                       "member_figures": members}
    kinds = sorted(set(held.drawn.tolist()) - {0})
    drawn = {"drawn": {str(k): scored(held.rows(held.drawn == k), head.read) for k in kinds}} \
        if kinds else {}
    return {**figures, **scored(real_held, head.read),
            "held_out_states": len(real_held.ends), **drawn}


def train_foresight(checkpoint: str | Path, data: str | Path | Sequence[str | Path],
                    out: str | Path,
                    holdout: float = 0.1, episodes: int | None = None, epochs: int | None = None,
                    batch: int = 64, precision: str = "bf16", seed: int = 0,
                    dtype: torch.dtype | None = None, hold: bool = False,
                    drawn_steps: Sequence[int] = (), every_state: bool = False,
                    drawn_share: float = 1.0, fate: str = "end", tokens: bool = False,
                    members: int = 1, progress: bool = True) -> dict[str, Any]:
    """Fit a foresight head (or, with ``hold``, a hold head) to the frozen model
    ``checkpoint`` on the dataset ``data`` (its last ``holdout`` share of episodes held
    out, as in `worldsim train`) and write the model with the head to ``out``. Returns what
    was done and the held-out figures (also saved in the checkpoint's
    ``info.trained["foresight"]`` or ``info.trained["hold"]``). The model's other weights
    and heads are kept.

    Args:
        checkpoint: the world model (run folder, file or shipped name).
        data: a dataset of the model's env, from `worldsim collect` (with ``hold``: one with
            branches, `worldsim collect --branch-steps H`; the head looks ``H`` steps ahead),
            or several (each split into fitted and held-out episodes, the states pooled).
        out: where to write the new checkpoint (a folder or ``.safetensors`` file).
        holdout: share of the episodes held out to stop the fit and to score it.
        episodes: use only the first N episodes of each side of the split (quick runs).
        epochs: most passes over the states (default: 40 for the foresight head, 100 for
            the hold head).
        batch: episodes run through the model at once.
        precision: the model's inference precision for the states (as dreams use).
        seed: the head's initial weights and the order of the fit's minibatches.
        dtype: store the floating-point weights in this type (float16 halves a shipped file).
        hold: fit the hold head (which held action survives) instead of the foresight head.
        drawn_steps: with ``hold``, also fit it at the states dreams reach after drawing
            the last K frames themselves, for each K (:func:`branch_states`): the head then
            ranks the moves in dreams as well as at real states (the figures per K are under
            ``drawn``).
        drawn_share: the share of the states also drawn (each draw costs K model steps).
        every_state: with ``hold``, fit it at every state the collection examined, decisive
            or not (:func:`branch_states`): its risk is then the chance of dying, so dreams
            it ends die about as often as the game, not only where the moves' fates differ.
        fate: with ``hold``, what its risk is the chance of: ``"end"`` (the episode ends
            within the steps) or ``"hit"`` (the player loses health or the episode ends;
            needs data recorded from a game that reports health) (:func:`branch_states`).
        tokens: with ``hold``, the head reads every token of the frame instead of their
            mean (``DynamicsConfig.hold_tokens``); the model's state, what state agents
            observe, is then those tokens.
        members: with ``hold``, fit this many heads from seeds ``seed``, ``seed + 1``, ...
            on the same states and keep them all (``DynamicsConfig.hold_members``); the
            head's risk is their mean chance.
    """
    started = time.perf_counter()
    model = WorldModel.load(checkpoint)
    if not model.info.env:
        raise ConfigError(f"{checkpoint} does not say which env it was trained on; the "
                          "head is fitted on a dataset of that env")
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    datasets = [EpisodeDataset(source, env=model.info.env, frame_size=model.info.frame_size,
                               num_actions=model.num_actions) for source in sources]
    epochs = epochs if epochs is not None else 100 if hold else 40
    if epochs < 1 or batch < 1:
        raise ConfigError(f"epochs and batch must be at least 1, got {epochs} and {batch}")
    if episodes is not None and episodes < 1:
        raise ConfigError(f"episodes must be at least 1, got {episodes}")
    drawn_steps = sorted(set(drawn_steps))
    if (drawn_steps or every_state or fate != "end" or tokens or members != 1) and not hold:
        raise ConfigError("drawn steps, every state, fates, tokens and members are for the "
                          "hold head (add --hold)")
    if members < 1:
        raise ConfigError(f"members must be at least 1 (one head), got {members}")
    if any(k < 1 for k in drawn_steps):
        raise ConfigError(f"drawn steps must be at least 1, got {drawn_steps}")
    if not 0 < drawn_share <= 1:
        raise ConfigError(f"the drawn share must be in (0, 1], got {drawn_share}")
    branch_steps = {int((d.info.get("branching") or {}).get("steps", 0)) for d in datasets}
    if hold and 0 in branch_steps:
        raise ConfigError(f"{', '.join(map(str, sources))}: a dataset has no branches; the "
                          "hold head learns which held action survives from them; record "
                          "one with `worldsim collect --branch-steps 8` (plus the usual "
                          "options)")
    if hold and len(branch_steps) > 1:
        raise ConfigError(f"the datasets hold actions for different steps "
                          f"({sorted(branch_steps)}); fit the hold head on branches of one "
                          "length")
    dynamics = model.denoiser.model
    if hold:  # the states are read as the new head will read them; the old head goes
        dynamics.cfg.hold_tokens = model.tokens_per_frame if tokens else 0
        dynamics.hold_head = None
    fitted, held = [], []  # per dataset: states of the fitted and held-out episodes
    episode_counts = [0, 0]
    def read(model: WorldModel, dataset: EpisodeDataset, batch: int, precision: str,
             progress: bool) -> Any:
        if hold:
            return branch_states(model, dataset, batch, precision, progress, drawn_steps, seed,
                                 every_state, drawn_share, fate)
        return frame_states(model, dataset, batch, precision, progress)

    for dataset in datasets:
        fitting, holding = dataset.split(holdout)
        if episodes is not None:
            fitting = first_episodes(fitting, episodes)
            holding = first_episodes(holding, episodes // 9)
        episode_counts[0] += len({e.index for e in fitting.entries})
        episode_counts[1] += len({e.index for e in holding.entries})
        fitted.append(read(model, fitting, batch, precision, progress))
        held.append(read(model, holding, batch, precision, progress))
    torch.manual_seed(seed)
    if hold:
        steps = branch_steps.pop()
        fitted_states, held_states = _joined(fitted), _joined(held)
        model.config.dynamics.hold_steps = steps
        dynamics.cfg.hold_members = members
        dynamics.hold_head = HoldHead(model.config.dynamics.width, model.num_actions,
                                      tokens=dynamics.cfg.hold_tokens, members=members)
        figures = fit_hold_head(dynamics.hold_head, fitted_states, held_states, epochs=epochs,
                                seed=seed, progress=progress)
        fitted_count = {"states_fitted": int((fitted_states.drawn == 0).sum()),
                        "hold_steps": steps, "every_state": every_state, "fate": fate,
                        "tokens": dynamics.cfg.hold_tokens, "members": members}
        if drawn_steps:
            fitted_count |= {"drawn_steps": drawn_steps, "drawn_share": drawn_share,
                             "drawn_states_fitted": int((fitted_states.drawn > 0).sum())}
    else:
        frames_fitted, frames_held = _joined(fitted), _joined(held)
        model.config.dynamics.foresight_head = True
        dynamics.foresight_head = ForesightHead(model.config.dynamics.width, model.num_actions)
        figures = fit_head(dynamics.foresight_head, frames_fitted, frames_held, epochs=epochs,
                           seed=seed, progress=progress)
        fitted_count = {"steps_fitted": len(frames_fitted.ends)}
    record = {"checkpoint": str(checkpoint),
              "data": str(sources[0]) if len(sources) == 1 else [str(d) for d in sources],
              "episodes_fitted": episode_counts[0], "episodes_held_out": episode_counts[1],
              **fitted_count, "precision": precision, "seed": seed, **figures,
              "wall_seconds": round(time.perf_counter() - started, 1),
              "machine": machine_info()}
    model.info.trained["hold" if hold else "foresight"] = record
    model.save(out, dtype=dtype)
    return record


def _joined(parts: list[Any]) -> Any:
    """One :class:`FrameStates` or :class:`BranchStates` of several, rows concatenated."""
    return type(parts[0])(*(torch.cat(rows) for rows in zip(
        *(dataclasses.astuple(part) for part in parts), strict=True)))


def first_episodes(dataset: EpisodeDataset, count: int) -> EpisodeDataset:
    """The files of ``dataset``'s first ``count`` (at least one) episode numbers, each with
    its branches."""
    kept = set(sorted({entry.index for entry in dataset.entries})[:max(1, count)])
    return dataset.subset([p for p, entry in enumerate(dataset.entries) if entry.index in kept])
