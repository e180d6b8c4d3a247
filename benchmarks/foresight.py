"""Does the dream see death coming? The world model's foresight, measured on real play.

An agent trained in a dream, or a planner that asks the dream before each move, can only
avoid a death the dream shows it in advance. This measures that directly. Real episodes
are played from seeded resets by a policy (default: sticky random actions). At every
``--stride``-th step ``t`` of each, ``--samples`` dreams are prompted with the real frames
up to ``t`` (the model's context) and played ``--horizon`` steps on, under the actions the
real episode took next (the last one held after the episode ended). The dream's risk of
an end within ``h`` steps, ``1 - prod_{k<=h} (1 - p_k)`` averaged over the dreams (``p_k``:
the termination head at dream step ``k``), is scored against whether the real episode
ended within ``h`` steps: ROC AUC (0.5: no foresight; 1: every coming death ranked above
every survival) per horizon.

The same risk computed with the real next frames fed in (teacher forcing) is the
reference: how well the head reads a death from frames that show it. A dream whose AUC
falls far below it at a horizon has lost, by then, what makes the death visible (the
fireball, its path).

How much a coming death shows in the real frames at all is measured too (``--probe-episodes``,
on by default): a logistic read-out, fitted on three quarters of those episodes and scored on
the rest, of the encoder's latent of frame ``t`` (what a latent agent sees) and of the
model's state after frame ``t`` (the pooled last-layer tokens its heads read, the frame
attending to its past), against a real end within ``h`` steps. A dream AUC well below the
read-out's says the dream loses what the real frame shows. A calibrated read-out of "the
next step ends" from the state and the action, fitted on all those episodes, is then used
as the hazard of the same dreams, read from each dreamt state before the step is drawn
(rows ``"<sampler>, next-step read-out"``): what a foresight head would give a dream. A
model with a foresight head (`worldsim train-foresight`) gets rows ``"<sampler>, foresight
head"``: its dreams' risk by that head, as its dream env and the planner end dreams.

    python -m benchmarks.foresight --checkpoint takecover
    python -m benchmarks.foresight --checkpoint runs/tc --sampler default \\
        --sampler s20x16:denoise_steps=16,sigma_max=20 --episodes 40

Writes ``benchmarks/results/<name>-<date>.json`` (default name ``foresight``; with the
machine) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import write_result
from benchmarks.dream_events import parse_sampler
from worldsim.diffusion.edm import with_sampler_settings
from worldsim.errors import ConfigError
from worldsim.metrics import roc_auc
from worldsim.noise import NoiseStreams
from worldsim.sampler_settings import SAMPLER_KEYS

REPORTED_HORIZONS = (1, 2, 4, 8, 16, 32)


def play_real(env: Any, policy: Any, seed: int) -> tuple[np.ndarray, list[int], bool]:
    """One real episode (:func:`envs.collect.play_episode`): frames ``(T + 1, H, W, 3)``,
    its T actions, whether it ended by the game (a death) rather than the cap."""
    from envs.collect import play_episode

    episode = play_episode(env, policy, seed)
    return episode.frames, episode.actions.tolist(), bool(episode.terminated[-1])


@torch.no_grad()
def episode_risks(model: Any, frames: np.ndarray, actions: list[int], samplers: dict[str, Any],
                  horizon: int, samples: int, stride: int, seed: int, precision: str,
                  readout: NextStepReadout | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Risks of an end within 1..horizon steps from every ``stride``-th step of one episode.

    Returns:
        ``steps_left`` ``(S,)`` real steps from each scored step to the episode's end, and
        per sampler name (and ``"teacher_forced"``) ``(S, horizon)`` risks; with a
        ``readout``, also ``"<name>, next-step read-out"``: the same dreams, the hazard of
        each step read out from the state before it and the action; for a model with a
        foresight head, ``"<name>, foresight head"`` (and ``"teacher_forced, foresight
        head"``): the same dreams ended by that head, as its dream env ends them.
    """
    context = model.config.dynamics.context_frames
    latents = model.encode_episode(frames)  # (T + 1, c, h, w)
    total = len(actions)
    starts = list(range(0, total, stride))
    held = actions + [actions[-1]] * horizon  # the last action held past the end
    names = [*samplers, "teacher_forced"]
    risks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for name in samplers if readout is not None else ():
        risks[f"{name}, next-step read-out"] = []
    for name in names if model.has_foresight else ():
        risks[f"{name}, foresight head"] = []
    with model.autocast(precision):
        for t in starts:
            low = max(0, t - context + 1)
            prompt = latents[low:t + 1][None]
            prompt_actions = torch.tensor(actions[low:t], dtype=torch.long)[None]
            future = torch.tensor(held[t:t + horizon], dtype=torch.long)
            for name, sampler in samplers.items():
                noise = NoiseStreams.seeded([seed * 7919 + t * samples + row
                                             for row in range(samples)], model.device)
                state = model.start(prompt.expand(samples, -1, -1, -1, -1),
                                    prompt_actions.expand(samples, -1), latents=True)
                hazards, read, seen = [], [], []
                for k in range(horizon):
                    if readout is not None:  # from the state before the step: no frame drawn
                        read.append(readout(model.pool(model.features(state)),
                                            future[k].expand(samples)))
                    result = model.step(state, future[k].expand(samples), noise, sampler)
                    hazards.append(result.termination_prob.float().cpu())
                    if result.foresight_prob is not None:
                        seen.append(result.foresight_prob.float().cpu())
                risks[name].append(risk_within(hazards))
                if readout is not None:
                    risks[f"{name}, next-step read-out"].append(risk_within(read))
                if seen:
                    risks[f"{name}, foresight head"].append(risk_within(seen))
            # the head on the real frames that follow (as long as the episode has them)
            state = model.start(prompt, prompt_actions, latents=True)
            hazards, seen = [], []
            for k in range(min(horizon, total - t)):
                result = model.observe(state, latents[t + k + 1][None], future[k][None],
                                       latents=True)
                hazards.append(result.termination_prob.double().cpu())
                if result.foresight_prob is not None:
                    seen.append(result.foresight_prob.double().cpu())
            risks["teacher_forced"].append(risk_within(padded(hazards, horizon)))
            if seen:
                risks["teacher_forced, foresight head"].append(risk_within(padded(seen, horizon)))
    steps_left = np.array([total - t for t in starts])
    return steps_left, {name: np.stack(rows) for name, rows in risks.items()}


def padded(hazards: list[torch.Tensor], horizon: int) -> list[torch.Tensor]:
    """Hazards of the steps a real episode still had, the last one held to ``horizon``."""
    return hazards + [hazards[-1]] * (horizon - len(hazards))


def risk_within(hazards: list[torch.Tensor]) -> np.ndarray:
    """Per-step hazards ``[(samples,)] * H`` -> the risk of an end within 1..H steps,
    averaged over the samples ``(H,)``."""
    alive = torch.cumprod(1 - torch.stack(hazards, 1), dim=1)  # (samples, H)
    return (1 - alive.mean(0)).numpy()


def score(steps_left: np.ndarray, died: np.ndarray, risks: np.ndarray,
          horizon: int) -> dict[str, Any]:
    """AUC per reported horizon: risk within ``h`` against a real death within ``h``."""
    table: dict[str, Any] = {}
    for h in (h for h in REPORTED_HORIZONS if h <= horizon):
        coming = died & (steps_left <= h)
        auc = roc_auc(coming, risks[:, h - 1])
        table[str(h)] = {
            "auc": None if auc is None else round(auc, 4),
            "deaths_coming": int(coming.sum()), "scored_steps": len(coming),
            "mean_risk_death_coming": round(float(risks[coming, h - 1].mean()), 4)
            if coming.any() else None,
            "mean_risk_otherwise": round(float(risks[~coming, h - 1].mean()), 4)
            if (~coming).any() else None}
    return table


@dataclass
class Logistic:
    """A fitted logistic read-out: standardisation, then a linear map to a logit."""

    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    weight: torch.Tensor  # (F,)
    bias: torch.Tensor  # (1,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight + self.bias  # (B,)


def fit_logistic(features: torch.Tensor, labels: np.ndarray, rows: np.ndarray,
                 balance: bool, steps: int = 400) -> Logistic:
    """Logistic regression on standardised ``features[rows]`` (light L2; with ``balance``
    positives are up-weighted to balance the classes)."""
    mean, std = features[rows].mean(0), features[rows].std(0) + 1e-5
    x = ((features - mean) / std)[rows]
    target = torch.tensor(labels[rows], dtype=torch.float32)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    balance_weight = (1 - target.mean()) / target.mean() if balance else None
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                x @ weight + bias, target, pos_weight=balance_weight) + 1e-3 * weight.pow(2).sum()
            loss.backward()
            optimizer.step()
    return Logistic(mean, std, weight.detach(), bias.detach())


@dataclass
class NextStepReadout:
    """A logistic read-out of "the next step ends the episode" from the model's state and
    the action taken (calibrated: fitted without class weights), to use as a dream's hazard
    on the dream's own states."""

    logistic: Logistic
    num_actions: int

    @staticmethod
    def features(states: torch.Tensor, actions: torch.Tensor, num_actions: int) -> torch.Tensor:
        """States ``(B, D)`` and actions ``(B,)`` -> ``(B, D + A)``: the state, one-hot action."""
        onehot = torch.nn.functional.one_hot(actions.long(), num_actions).float()
        return torch.cat([states.float().cpu(), onehot.cpu()], dim=1)

    @classmethod
    def fit(cls, states: torch.Tensor, actions: torch.Tensor, ends: np.ndarray,
            num_actions: int, steps: int = 800) -> NextStepReadout:
        """Fit on every row: ``ends[i]`` says whether the step after state ``i`` (taking
        ``actions[i]``) ended the episode."""
        features = cls.features(states, actions, num_actions)
        every = np.ones(len(features), dtype=bool)
        return cls(fit_logistic(features, ends, every, balance=False, steps=steps), num_actions)

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        features = self.features(states, actions, self.num_actions)
        return torch.sigmoid(self.logistic.logits(features))  # (B,)


@torch.no_grad()
def frame_features(model: Any, frames: np.ndarray, actions: list[int], precision: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per real frame ``t = 1 .. T-1`` of one episode (the last, the end itself, is left
    out): the encoder's flat latent ``(T-1, c*h*w)`` and the model's state ``(T-1, D)``, the
    mean of the last-layer tokens the termination head reads after the model has seen
    frames ``0..t`` (teacher forcing)."""
    from worldsim.foresight import teacher_forced_states

    latents = model.encode_episode(frames)  # (T + 1, c, h, w)
    taken = torch.tensor(actions, dtype=torch.long)[None]
    hidden = teacher_forced_states(model, latents[None], taken, precision)[0, 1:]
    return latents[1:len(actions)].flatten(1).float().cpu(), hidden.cpu()


def fit_probe(features: torch.Tensor, labels: np.ndarray, train: np.ndarray,
              steps: int = 400) -> float | None:
    """AUC on the held-out rows (``~train``) of a logistic read-out fitted on ``train``
    (standardised features, positives up-weighted to balance the classes, light L2)."""
    if labels[train].sum() == 0:
        return None
    logistic = fit_logistic(features, labels, train, balance=True, steps=steps)
    return roc_auc(labels[~train], logistic.logits(features[~train]).numpy())


def linear_probe(model: Any, env: Any, player: Any, episodes: int, horizon: int, seed: int,
                 precision: str, progress: bool) -> tuple[dict[str, Any], NextStepReadout]:
    """The read-out ceiling (see the module doc) on ``episodes`` fresh real episodes, and a
    :class:`NextStepReadout` fitted on all of them."""
    latents, states, lefts, deaths, index, taken = [], [], [], [], [], []
    for episode in tqdm(range(episodes), desc="probe", unit="ep", disable=not progress):
        frames, actions, died = play_real(env, player, seed + episode)
        latent, state = frame_features(model, frames, actions, precision)
        latents.append(latent)
        states.append(state)
        lefts.append(len(actions) - np.arange(1, len(actions)))
        deaths.append(np.full(len(actions) - 1, died))
        index.append(np.full(len(actions) - 1, episode))
        taken.append(torch.tensor(actions[1:], dtype=torch.long))  # the action after frame t
    steps_left, died = np.concatenate(lefts), np.concatenate(deaths)
    fitted = round(episodes * 0.75)
    train = np.concatenate(index) < fitted
    table = {}
    for h in (h for h in REPORTED_HORIZONS if h <= horizon):
        coming = died & (steps_left <= h)
        latent_auc = fit_probe(torch.cat(latents), coming, train)
        state_auc = fit_probe(torch.cat(states), coming, train)
        table[str(h)] = {"latent": None if latent_auc is None else round(latent_auc, 4),
                         "state": None if state_auc is None else round(state_auc, 4),
                         "deaths_coming_held_out": int(coming[~train].sum()),
                         "held_out_steps": int((~train).sum())}
    readout = NextStepReadout.fit(torch.cat(states), torch.cat(taken),
                                  died & (steps_left == 1), model.num_actions)
    return {"episodes": episodes, "seed": seed, "train_episodes": fitted,
            "auc": table}, readout


@dataclass
class RealPlay:
    """What a benchmark on freshly played real episodes needs: the world model, its dream
    samplers by name, and its real game with a policy to play it."""

    model: Any
    settings: dict[str, dict[str, Any]]  # sampler name -> the settings given
    samplers: dict[str, Any]  # sampler name -> the EDMSampler built from them
    env: Any
    player: Any


def real_play(checkpoint: str, samplers: list[str], policy: str,
              *counts: int) -> RealPlay:
    """Load ``checkpoint``, build its ``samplers`` (``NAME[:K=V,...]``), make the env it was
    trained on and ``policy`` to play it; ``counts`` (episodes, horizon, ...) must be >= 1."""
    from envs import make_env
    from envs.policies import make_policy
    from worldsim.world_model import WorldModel

    if min(counts) < 1:
        raise ConfigError("episodes, horizon, samples and stride must all be >= 1")
    model = WorldModel.load(checkpoint)
    if not model.info.env:
        raise ConfigError(f"{checkpoint} does not say which env it was trained on; the "
                          "benchmark plays that env")
    settings = dict(parse_sampler(spec) for spec in samplers)
    built = {name: with_sampler_settings(model.sampler, values)
             for name, values in settings.items()}
    env = make_env(model.info.env, **dict(model.info.env_options))
    return RealPlay(model, settings, built, env, make_policy(policy, int(env.action_space.n)))


def add_real_play_options(parser: argparse.ArgumentParser, checkpoint: str, horizon: str,
                          samples: str, stride: str) -> None:
    """The options of a benchmark on freshly played real episodes (``checkpoint``,
    ``horizon``, ``samples``, ``stride``: what those options mean for it)."""
    parser.add_argument("--checkpoint", default="takecover",
                        help=f"{checkpoint}: run folder, file or shipped name (default: "
                             "takecover)")
    parser.add_argument("--sampler", action="append", default=None, metavar="NAME[:K=V,...]",
                        help=f"a sampler setting to measure, repeatable; keys: {SAMPLER_KEYS} "
                             "(default: 'default', the checkpoint's own)")
    parser.add_argument("--episodes", type=int, default=20,
                        help="real episodes played (default: 20)")
    parser.add_argument("--policy", default="sticky:4",
                        help="who plays the real episodes: random, sticky:K or agent:PATH "
                             "(default: sticky:4)")
    parser.add_argument("--horizon", type=int, default=8, help=f"{horizon} (default: 8)")
    parser.add_argument("--samples", type=int, default=4, help=f"{samples} (default: 4)")
    parser.add_argument("--stride", type=int, default=2, help=f"{stride} (default: 2)")
    parser.add_argument("--seed", type=int, default=2_000_000,
                        help="episode i is played with seed SEED + i (default: 2000000)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"),
                        help="dream inference precision (default: bf16)")


def evaluate(checkpoint: str, samplers: list[str], episodes: int = 20, policy: str = "sticky:4",
             horizon: int = 8, samples: int = 4, stride: int = 2, seed: int = 2_000_000,
             precision: str = "bf16", probe_episodes: int = 160,
             progress: bool = True) -> dict[str, Any]:
    """Foresight of a world model on freshly played real episodes (see the module doc);
    ``probe_episodes`` more (from seed ``seed + episodes``; 0: none) for the read-out."""
    if probe_episodes < 0 or 0 < probe_episodes < 4:
        raise ConfigError(f"probe episodes must be 0 (no read-out) or >= 4 (a quarter is "
                          f"held out), got {probe_episodes}")
    play = real_play(checkpoint, samplers, policy, episodes, horizon, samples, stride)
    model, settings, built, env, player = (play.model, play.settings, play.samplers,
                                           play.env, play.player)
    lefts, deaths, risks = [], [], {}
    started = time.perf_counter()
    try:
        probe, readout = linear_probe(model, env, player, probe_episodes, horizon,
                                      seed + episodes, precision, progress) \
            if probe_episodes else (None, None)
        for episode in tqdm(range(episodes), desc="foresight", unit="ep", disable=not progress):
            frames, actions, died = play_real(env, player, seed + episode)
            steps_left, rows = episode_risks(model, frames, actions, built, horizon, samples,
                                             stride, seed + episode, precision, readout)
            lefts.append(steps_left)
            deaths.append(np.full(len(steps_left), died))
            for name, value in rows.items():
                risks.setdefault(name, []).append(value)
    finally:
        env.close()
    steps_left, died = np.concatenate(lefts), np.concatenate(deaths)
    return {
        "checkpoint": str(checkpoint), "env": model.info.env, "policy": policy,
        "episodes": episodes, "seed": seed, "horizon": horizon, "samples": samples,
        "stride": stride, "precision": precision,
        "samplers": settings,
        "auc": {name: score(steps_left, died, np.concatenate(value), horizon)
                for name, value in risks.items()},
        "read_out": probe,
        "wall_seconds": round(time.perf_counter() - started, 1)}


def describe(results: dict[str, Any]) -> str:
    horizons = list(next(iter(results["auc"].values())))
    lines = ["| dream | " + " | ".join(f"AUC h={h}" for h in horizons) + " |",
             "| --- | " + " | ".join("---" for _ in horizons) + " |"]
    for name, table in results["auc"].items():
        cells = [("-" if table[h]["auc"] is None else f"{table[h]['auc']:.3f}") for h in horizons]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if results.get("read_out"):
        for kind in ("latent", "state"):
            table = results["read_out"]["auc"]
            cells = [("-" if table[h][kind] is None else f"{table[h][kind]:.3f}")
                     for h in horizons]
            lines.append(f"| read-out of the real {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_real_play_options(
        parser, "a world model of an env with deaths",
        horizon="dream steps looked ahead from each scored step",
        samples="dreams per scored step, averaged",
        stride="score every STRIDE-th step of each episode")
    parser.add_argument("--probe-episodes", type=int, default=160,
                        help="more real episodes for the read-out of the real latent and the "
                             "model's state, a quarter held out; 0 skips it (default: 160)")
    parser.add_argument("--name", default=None,
                        help="results file name; the date is appended (default: foresight)")
    args = parser.parse_args(argv)
    results = evaluate(args.checkpoint, args.sampler or ["default"], args.episodes,
                       args.policy, args.horizon, args.samples, args.stride, args.seed,
                       args.precision, args.probe_episodes)
    path = write_result(args.name or "foresight", results)
    print(describe(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
