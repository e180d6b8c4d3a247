"""Does the dream pay one move more than another where the game does not?

In a survival game (TakeCover: one reward per tic alive, whatever the move) the only thing
that should separate two moves is whether they survive. A dream's reward comes from the
world model's reward head reading the frame it drew, and drawn frames differ by move (a
turning view blurs), so the head can pay one move more than another. An agent trained on
the dream's expected reward (reward times the chance to survive, ``--expected-ends``) then
weighs that difference against the hold head's risk.

Paired measurement: ``--batches`` batches of ``--num-envs`` dataset prompt states (drawn as
``worldsim train-agent`` draws them: ``--dataset``, ``--prompt-start``); at each state every
action is held for one decision of ``--decision-steps`` dream steps, each action with the
same dream noise. Per action: the reward summed over the held steps (the head's), the end
chance of the decision (from ``--ends``), and how often each action has the most expected
reward and the least risk; ``agreement`` is the share of states where the expected reward's
best move is the least risky one (under ``--reward survival`` it is 1 by construction).
States where some move dies for certain are left out of the reward figures (their reward is
weighted by zero).

    python -m benchmarks.dream_reward --checkpoint runs/models/takecover-hold-tokens5 \\
        --dataset data/takecover-plan2-branches --prompt-start decisive

Writes ``benchmarks/results/<name>-<date>.json`` (default name ``dream-reward``; with the
machine) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.common import write_result
from worldsim.errors import ConfigError


def measure(checkpoint: str, dataset: list[str] | str, prompt_start: str = "anywhere",
            decision_steps: int = 8, ends: str = "hold", num_envs: int = 64, batches: int = 4,
            precision: str = "bf16", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Per-action dream rewards and risks at the same prompt states and dream noise.

    Args:
        checkpoint: the world model (run folder, model.safetensors or shipped name).
        dataset: recorded play to draw prompt states from (one folder or several).
        prompt_start: where prompts end (:class:`envs.dream.PromptSource`).
        decision_steps: dream steps each action is held for.
        ends: the head that gives each decision's end chance (``"hold"``, ...).
        num_envs: prompt states per batch.
        batches: batches measured (``num_envs * batches`` states).
        precision: dream precision.
        seed: batch ``b`` draws its states with seed ``seed + 1000 * b``.
        progress: show a progress bar.
    """
    from envs.dream import DreamVectorEnv

    if batches < 1 or num_envs < 1:
        raise ConfigError("--batches and --num-envs must be >= 1")
    env = DreamVectorEnv(checkpoint, num_envs=num_envs, obs_mode="latent", dataset=dataset,
                         prompt_start=prompt_start, termination="expected", ends=ends,
                         decision_steps=decision_steps, max_episode_steps=1,
                         precision=precision)
    actions = env.single_action_space.n
    started = time.perf_counter()
    weighted, risks = [], []  # (states, actions) each
    for batch in tqdm(range(batches), desc="dream reward", disable=not progress):
        row_rewards, row_risks = [], []
        for action in range(actions):
            env.reset(seed=seed + 1000 * batch)  # the same states and noise for every action
            _, reward, _, _, infos = env.step(np.full(num_envs, action))
            row_rewards.append(reward)
            row_risks.append(infos["termination_prob"])
        weighted.append(np.stack(row_rewards, 1))
        risks.append(np.stack(row_risks, 1))
    expected, risk = np.concatenate(weighted), np.concatenate(risks)
    kept = (risk < 0.999).all(1)  # a certain death weighs its reward by zero
    if not kept.any():
        raise ConfigError(f"every one of the {len(risk)} states has a move that dies for "
                          "certain: no reward to compare; draw more states (--batches)")
    reward = expected[kept] / (1.0 - risk[kept])
    best_reward, least_risk = expected.argmax(1), risk.argmin(1)
    rows = np.arange(len(risk))
    spread = np.ptp(reward, 1)  # per state: the most a move is paid over the least
    return {
        "checkpoint": checkpoint, "dataset": dataset, "prompt_start": prompt_start,
        "decision_steps": decision_steps, "ends": env.ends, "precision": precision,
        "action_names": list(env.action_names), "states": len(risk),
        "states_without_a_certain_death": int(kept.sum()),
        "reward_per_decision": {"mean": float(reward.mean()), "std": float(reward.std()),
                                "per_action": reward.mean(0).round(4).tolist()},
        "reward_spread_between_actions": {
            "mean": float(spread.mean()), "p90": float(np.quantile(spread, 0.9))},
        "risk_per_action": risk.mean(0).round(4).tolist(),
        "most_reward_counts": np.bincount(reward.argmax(1), minlength=actions).tolist(),
        "most_expected_reward_counts": np.bincount(best_reward, minlength=actions).tolist(),
        "least_risk_counts": np.bincount(least_risk, minlength=actions).tolist(),
        "agreement": float((best_reward == least_risk).mean()),
        "risk_given_up": float((risk[rows, best_reward] - risk.min(1)).mean()),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="the world model: a run folder, model.safetensors or shipped name")
    parser.add_argument("--dataset", nargs="+", required=True, metavar="DIR",
                        help="recorded play to draw prompt states from (one folder or several)")
    parser.add_argument("--prompt-start", choices=["anywhere", "opening", "decisive"],
                        default="anywhere",
                        help="where prompts end, as in `worldsim train-agent` (default: "
                             "anywhere)")
    parser.add_argument("--decision-steps", type=int, default=8,
                        help="dream steps each action is held for (default: 8)")
    parser.add_argument("--ends", choices=["auto", "frame", "foresight", "hold"],
                        default="hold", help="the head that gives each decision's end chance "
                                             "(default: hold)")
    parser.add_argument("--num-envs", type=int, default=64,
                        help="prompt states per batch (default: 64)")
    parser.add_argument("--batches", type=int, default=4, help="batches (default: 4)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16",
                        help="dream precision (default: bf16)")
    parser.add_argument("--seed", type=int, default=0,
                        help="batch b draws its states with seed SEED + 1000 b (default: 0)")
    parser.add_argument("--name", default="dream-reward",
                        help="results file name; the date is appended (default: dream-reward)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    dataset = args.dataset[0] if len(args.dataset) == 1 else args.dataset
    results = measure(args.checkpoint, dataset, args.prompt_start, args.decision_steps,
                      args.ends, args.num_envs, args.batches, args.precision, args.seed,
                      progress=not args.quiet)
    path = write_result(args.name, results)
    print(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
