"""Does the dream know which move survives? Counterfactual dodging, checked in the real game.

``benchmarks.foresight`` asks whether the dream sees a death coming under the actions the
game really took. An agent (or a planner) needs more: to know which *other* action would
have survived. The real game can say: VizDoom replays exactly from a seed, so from a real
state at step ``t`` of a recorded episode (reset with its seed, its first ``t`` actions
replayed) every action is held for ``--horizon`` steps, and the game tells which of them
die. Where the actions differ (some die, some survive: a *decisive* state), the dream,
prompted with the real frames up to ``t``, plays the same plans in ``--samples`` dreams
each, and its choice is the plan with the most expected steps survived (the planner's
rule). Reported per sampler and per end source (the termination head on the drawn frame;
the foresight head, if the model has one); a model with a hold head of the same steps is
also scored reading it at the real state, no dream drawn (``worldsim train-foresight
--hold``), and so is each ``--agent`` trained on the world model's state (``worldsim
train-agent --obs-mode state``): its own choice at the real state, the state its world
model reaches over the real frames. ``--drawn-steps K`` also reads the hold head at the
state a dream reaches after drawing the last K frames itself (prompted with the real frames
up to ``t - K``, stepped with the actions really played): how far drawn frames move the
state from what the head reads at the real one, the drift an agent trained in the dream
meets (states with ``t >= K`` only; each drawn ``--samples`` times, risks averaged):

- ``accuracy``: the share of decisive states where the dream's choice survives in the
  game, beside ``chance`` (the share of surviving actions) and each fixed action's share
  (a dream that always prefers one direction shows it there);
- ``contrast_auc``: over pairs of a dying and a surviving action of the same state, the
  chance that the dream gives the dying one the higher risk (ties count half; 0.5: the
  dream cannot tell them apart).

    python -m benchmarks.dodge --checkpoint runs/models/takecover-foresight
    python -m benchmarks.dodge --checkpoint takecover --sampler default \\
        --sampler s20x16:denoise_steps=16,sigma_max=20 --episodes 40
    python -m benchmarks.dodge --checkpoint takecover-hold --agent runs/agents/ppo-state

Writes ``benchmarks/results/<name>-<date>.json`` (default name ``dodge``; with the
machine) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import write_result
from benchmarks.foresight import add_real_play_options, real_play
from envs.collect import hold, replay
from worldsim.errors import ConfigError
from worldsim.foresight import drawn_states, drawn_window, teacher_forced_states
from worldsim.metrics import dodge_figures
from worldsim.noise import NoiseStreams


def oracle_episode(env: Any, seed: int, horizon: int, every: int = 2) -> dict[str, int]:
    """One real episode played by the game's own foresight: every ``every`` steps the action
    whose ``horizon`` held steps survive longest in the game itself (replayed from ``seed``;
    the current action kept while it survives the horizon, so the player does not dither),
    then held. What a planner of held actions with a perfect world model would score.
    Returns ``{"steps": .., "frames": ..}`` (game tics from the env's info)."""
    num_actions = int(env.action_space.n)
    actions: list[int] = []
    current, info, done = 0, {}, False
    while not done:
        if len(actions) % every == 0:
            ends = real_outcomes(env, seed, np.array(actions), len(actions), horizon,
                                 num_actions)
            lasting = np.where(ends == 0, horizon + 1, ends)
            if lasting[current] < lasting.max():
                current = int(np.argmax(lasting))
            replay(env, seed, actions)  # back to the real state
        _, _, terminated, truncated, info = env.step(current)
        actions.append(current)
        done = terminated or truncated
    return {"steps": len(actions), "frames": int(info.get("frames", len(actions)))}


def real_outcomes(env: Any, seed: int, actions: np.ndarray, t: int, horizon: int,
                  num_actions: int) -> np.ndarray:
    """For each action, the real step (1..horizon) at which holding it from step ``t`` of
    the episode played from ``env.reset(seed=seed)`` with ``actions`` ends the episode, or
    0 where it survives the horizon. ``(A,)`` int."""
    ends = np.zeros(num_actions, dtype=np.int64)
    for action in range(num_actions):
        replay(env, seed, actions[:t])
        held, _ = hold(env, action, horizon)
        if held[-1][2]:  # terminated
            ends[action] = len(held)
    return ends


@torch.no_grad()
def dream_risks(model: Any, latents: torch.Tensor, actions: np.ndarray, t: int,
                sampler: Any, sources: list[str], horizon: int, samples: int, seed: int,
                precision: str) -> dict[str, np.ndarray]:
    """Per end source, each action's risk of an end within ``horizon`` held steps and its
    expected steps survived, ``(A, 2)``, from dreams prompted with the real latent frames
    up to ``t`` (the model's context) and the actions between them."""
    num_actions = model.num_actions
    context = model.config.dynamics.context_frames
    low = max(0, t - context + 1)
    rows = num_actions * samples
    prompt = latents[low:t + 1][None].expand(rows, -1, -1, -1, -1)
    prompt_actions = torch.as_tensor(actions[low:t], dtype=torch.long)[None].expand(rows, -1)
    plan = torch.arange(num_actions).repeat_interleave(samples)  # hold each action
    # every action sees the same samples' noise: they differ by their actions alone
    noise = NoiseStreams.seeded([seed * 1_000_003 + t * samples + s for s in range(samples)]
                                * num_actions, model.device)
    alive = {source: torch.ones(rows) for source in sources}
    expected = {source: torch.zeros(rows) for source in sources}
    with model.autocast(precision):
        state = model.start(prompt, prompt_actions, latents=True)
        for _ in range(horizon):
            result = model.step(state, plan, noise, sampler)
            for source in sources:
                alive[source] = alive[source] * (1 - result.end_probability(source).float().cpu())
                expected[source] = expected[source] + alive[source]
    return {source: torch.stack([1 - alive[source].view(num_actions, samples).mean(1),
                                 expected[source].view(num_actions, samples).mean(1)],
                                dim=1).double().numpy()
            for source in sources}


def score(outcomes: list[np.ndarray], risks: list[np.ndarray]) -> dict[str, Any]:
    """Accuracy and contrast AUC over the decisive states (see the module doc); the dream's
    choice is the action with the most expected steps survived."""
    if not outcomes:
        return dodge_figures(np.zeros((0, 1), dtype=bool), np.zeros((0, 1)))
    risk = np.stack(risks)  # (N, A, 2): risk of an end, expected steps survived
    return dodge_figures(np.stack(outcomes) == 0, risk[:, :, 0],
                         choice=np.argmax(risk[:, :, 1], axis=1))


def evaluate(checkpoint: str, samplers: list[str], episodes: int = 20, policy: str = "sticky:4",
             horizon: int = 8, samples: int = 4, stride: int = 2, seed: int = 2_000_000,
             precision: str = "bf16", oracle_episodes: int = 0,
             agents: list[str] | None = None, drawn_steps: tuple[int, ...] = (),
             progress: bool = True) -> dict[str, Any]:
    """Counterfactual dodging of a world model on freshly played real episodes (see the
    module doc); with ``oracle_episodes``, also the score of the game's own foresight
    (:func:`oracle_episode`) over that many episodes from seed 1,000,000 (the score
    table's). ``agents``: state agents whose choices are scored too; ``drawn_steps``: the
    hold head read after that many drawn frames (see the module doc)."""
    from envs.collect import play_episode

    players = state_agents(agents or [])
    play = real_play(checkpoint, samplers, policy, episodes, horizon, samples, stride)
    model, settings, built, env, player = (play.model, play.settings, play.samplers,
                                           play.env, play.player)
    if not model.info.env.startswith("vizdoom/"):
        env.close()
        raise ConfigError(f"{checkpoint} was trained on {model.info.env}; counterfactual "
                          "dodging replays VizDoom episodes from their seeds")
    sources = ["frame", "foresight"] if model.has_foresight else ["frame"]
    outcomes: list[np.ndarray] = []
    risks: dict[str, list[np.ndarray]] = {f"{name}, {source}": []
                                          for name in built for source in sources}
    # a hold head answers the same question from the real state, with no dream drawn
    hold_row = "hold head (no dream)" if model.hold_steps == horizon else None
    if hold_row:
        risks[hold_row] = []
    for name in players:
        risks[name] = []
    if drawn_steps and not hold_row:
        env.close()
        raise ConfigError(f"--drawn-steps reads the hold head; {checkpoint} has none with "
                          f"{horizon} steps (fit one with `worldsim train-foresight --hold`)")
    if any(k < 1 for k in drawn_steps):
        env.close()
        raise ConfigError(f"--drawn-steps must be >= 1, got {list(drawn_steps)}")
    drawn_rows = {k: f"hold head after {k} drawn steps" for k in drawn_steps}
    # rows over fewer states than the decisive ones: their own outcomes
    row_outcomes: dict[str, list[np.ndarray]] = {name: [] for name in drawn_rows.values()}
    for name in drawn_rows.values():
        risks[name] = []
    states = 0
    started = time.perf_counter()
    try:
        for episode in tqdm(range(episodes), desc="dodge", unit="ep", disable=not progress):
            played = play_episode(env, player, seed + episode)
            latents = model.encode_episode(played.frames)
            if hold_row:
                held = model.hold_risk(teacher_forced_states(
                    model, latents[None], torch.as_tensor(played.actions)[None].long(),
                    precision)[0]).double().cpu().numpy()  # (T, A)
            chosen = {name: agent_choices(agent, played) for name, agent in players.items()}
            for t in range(0, len(played.actions), stride):
                states += 1
                ends = real_outcomes(env, seed + episode, played.actions, t, horizon,
                                     model.num_actions)
                survives = ends == 0
                if survives.all() or not survives.any():
                    continue  # only decisive states are dreamt
                outcomes.append(ends)
                if hold_row:  # (A, 2): risk, and the steps it leaves (orders the same)
                    risks[hold_row].append(np.stack([held[t], horizon * (1 - held[t])], 1))
                for name, probability in chosen.items():  # (A, 2): 1 - p, p
                    risks[name].append(np.stack([1 - probability[t], probability[t]], 1))
                for k in (k for k in drawn_steps if t >= k):
                    row_outcomes[drawn_rows[k]].append(ends)
                    risk = drawn_hold_risk(model, latents, played.actions, t, k,
                                           built[next(iter(built))], samples, seed + episode,
                                           precision)
                    risks[drawn_rows[k]].append(np.stack([risk, horizon * (1 - risk)], 1))
                for name, sampler in built.items():
                    found = dream_risks(model, latents, played.actions, t, sampler, sources,
                                        horizon, samples, seed + episode, precision)
                    for source, value in found.items():
                        risks[f"{name}, {source}"].append(value)
        oracle = [oracle_episode(env, 1_000_000 + i, horizon)
                  for i in tqdm(range(oracle_episodes), desc="oracle", unit="ep",
                                disable=not progress)]
    finally:
        env.close()
    return {
        "checkpoint": str(checkpoint), "env": model.info.env, "policy": policy,
        "episodes": episodes, "seed": seed, "horizon": horizon, "samples": samples,
        "stride": stride, "precision": precision, "samplers": settings,
        "states": states, "decisive_share": round(len(outcomes) / max(states, 1), 4),
        "dreams": {name: score(row_outcomes.get(name, outcomes), rows)
                   for name, rows in risks.items()},
        "oracle": summary([row["frames"] for row in oracle]) | {"episodes": oracle}
        if oracle else None,
        "wall_seconds": round(time.perf_counter() - started, 1)}


@torch.no_grad()
def drawn_hold_risk(model: Any, latents: torch.Tensor, actions: np.ndarray, t: int, k: int,
                    sampler: Any, samples: int, seed: int, precision: str) -> np.ndarray:
    """The hold head's risk per action ``(A,)`` at step ``t``, read after a dream drew
    frames ``t - k + 1 .. t`` itself under the actions really played (prompted with the
    real frames up to ``t - k``), averaged over ``samples`` dreams."""
    prompt, prompt_actions, drawn = drawn_window(
        latents, torch.as_tensor(actions, dtype=torch.long), t, k,
        model.config.dynamics.context_frames)
    noise = NoiseStreams.seeded([seed * 1_000_003 + t * samples + s for s in range(samples)],
                                model.device)
    states = drawn_states(model, prompt[None].expand(samples, -1, -1, -1, -1),
                          prompt_actions[None].expand(samples, -1),
                          drawn[None].expand(samples, -1), noise, sampler, precision)
    return model.hold_risk(states).float().mean(0).double().cpu().numpy()


def state_agents(paths: list[str]) -> dict[str, Any]:
    """Load state agents by path, keyed by their row name (``agent NAME``)."""
    import agents as portable

    loaded = {}
    for path in paths:
        agent = portable.load(path)
        if agent.observation.kind != "state":
            raise ConfigError(f"{path} acts on {agent.observation.kind} observations; --agent "
                              "scores agents on the world model's state (`worldsim "
                              "train-agent --obs-mode state`)")
        loaded[f"agent {path}"] = agent
    return loaded


@torch.no_grad()
def agent_choices(agent: Any, played: Any) -> np.ndarray:
    """A state agent's action probabilities ``(T, A)`` at each real state of an episode
    (its world model following the real frames and actions; ties of a Q-value agent's
    scores aside, the most probable action is its choice)."""
    model = agent.world_model
    latents = model.encode_episode(played.frames)
    states = teacher_forced_states(model, latents[None],
                                   torch.as_tensor(played.actions)[None].long(),
                                   agent.observation.precision)[0]  # (T, D)
    scores = agent.network(model.state_observation(states)).float()
    return torch.softmax(scores.double(), dim=-1).cpu().numpy()


def summary(frames: list[int]) -> dict[str, float]:
    """Mean, std, median, min, max of frames survived."""
    values = np.asarray(frames, dtype=np.float64)
    return {"mean": round(float(values.mean()), 1), "std": round(float(values.std()), 1),
            "median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max())}


def describe(results: dict[str, Any]) -> str:
    lines = [f"{results['states']} real states, {results['decisive_share']:.0%} decisive "
             f"(holding some action for {results['horizon']} steps dies, another survives)",
             "| dream, ends by | accuracy | chance | contrast AUC | each fixed action |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in results["dreams"].items():
        if row["accuracy"] is None:
            lines.append(f"| {name} | - | - | - | - |")
            continue
        fixed = " / ".join(f"{v:.2f}" for v in row["fixed_action_accuracy"])
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['chance']:.3f} | "
                     f"{row['contrast_auc']:.3f} | {fixed} |")
    if results.get("oracle"):
        oracle = results["oracle"]
        lines.append(f"the game's own foresight (hold the action that survives "
                     f"{results['horizon']} steps) over {len(oracle['episodes'])} episodes: "
                     f"{oracle['mean']:.0f} +- {oracle['std']:.0f} frames (median "
                     f"{oracle['median']:.0f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_real_play_options(
        parser, "a world model of a VizDoom env",
        horizon="steps each action is held, in the game and in the dream",
        samples="dreams per action and state, averaged",
        stride="try every STRIDE-th step of each episode")
    parser.add_argument("--oracle-episodes", type=int, default=0, metavar="N",
                        help="also play N real episodes (seeds from 1,000,000, the score "
                             "table's) choosing each move by the game's own outcomes of "
                             "holding each action: the ceiling of planning with held actions "
                             "(default: 0)")
    parser.add_argument("--agent", action="append", default=[], metavar="PATH",
                        help="also score this agent trained on the world model's state "
                             "(`worldsim train-agent --obs-mode state`): its choice at each "
                             "real decisive state; repeatable")
    parser.add_argument("--drawn-steps", type=int, nargs="+", default=[], metavar="K",
                        help="also read the hold head after the dream drew the last K frames "
                             "itself (under the real actions), for each K: how much drawn "
                             "frames move the state from the real one (models with a hold "
                             "head; the first --sampler draws)")
    parser.add_argument("--name", default=None,
                        help="results file name; the date is appended (default: dodge)")
    args = parser.parse_args(argv)
    results = evaluate(args.checkpoint, args.sampler or ["default"], args.episodes,
                       args.policy, args.horizon, args.samples, args.stride, args.seed,
                       args.precision, args.oracle_episodes, args.agent,
                       tuple(args.drawn_steps))
    path = write_result(args.name or "dodge", results)
    print(describe(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
