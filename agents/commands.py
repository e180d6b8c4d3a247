"""CLI subcommands for agents: ``worldsim train-agent`` and ``worldsim eval``."""

from __future__ import annotations

import argparse

from agents.evaluate import AGENT_HELP
from worldsim.sampler_settings import SAMPLER_KEYS

SB3_ALGOS = ("ppo", "a2c", "dqn")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-agent", help="train an agent inside a world model's dream",
        description="Train an agent entirely in the dream of a world model: PPO, A2C or DQN "
                    "(stable-baselines3) on the batched dream env, or World Models' linear "
                    "controller with CMA-ES. Writes a portable agent (OUT/agent.safetensors, "
                    "for `worldsim eval`), TensorBoard logs (OUT/tb) and every dream "
                    "episode (OUT/episodes.csv). Re-running the same command resumes; a "
                    "larger --steps continues a finished run.")
    train.add_argument("--checkpoint", required=True,
                       help="world model: a run folder from `worldsim train`, a "
                            "model.safetensors file, or a shipped name (e.g. takecover)")
    train.add_argument("--algo", default="ppo", choices=[*SB3_ALGOS, "cmaes"],
                       help="ppo, a2c or dqn (stable-baselines3), or cmaes (linear "
                            "controller, World Models) (default: ppo)")
    train.add_argument("--steps", type=int, required=True,
                       help="dream steps to train for, summed over all dreams of the batch")
    train.add_argument("--out", required=True, help="run folder (created or resumed)")
    train.add_argument("--temperature", type=float, default=None,
                       help="dream sampling temperature; higher makes the dream less "
                            "predictable and harder to exploit (default: the checkpoint's)")
    train.add_argument("--termination-threshold", type=float, default=None, metavar="P",
                       help="end a dream where the termination head's probability reaches P, "
                            "instead of sampling each step's end from it (the default); "
                            "`python -m benchmarks.dream_events` reports how often dreams end "
                            "at a few thresholds, to match the real game's death rate")
    train.add_argument("--expected-ends", action="store_true",
                       help="SB3: no dream ends by the head; each reward is weighted by the "
                            "chance the dream is still alive (the head's survival chances so "
                            "far, multiplied, as Dreamer weights imagined returns), so returns "
                            "are expected returns without the noise of sampled ends; with "
                            "--max-episode-steps 1 and --algo-kwarg gamma=0 the agent "
                            "maximises the chance of surviving each decision")
    train.add_argument("--ends", choices=["auto", "frame", "foresight", "hold"],
                       default="auto",
                       help="which head ends dreams: frame, the termination head on the drawn "
                            "frame; foresight, the foresight head on the frame before and the "
                            "action (`worldsim train-foresight`); hold, the hold head's risk "
                            "for the action taken, as a per-step chance (`worldsim "
                            "train-foresight --hold`); auto: foresight if the model has one, "
                            "else frame (default: auto)")
    train.add_argument("--num-envs", type=int, default=16,
                       help="dreams stepped together in one batch, SB3 algorithms (default: 16)")
    train.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    train.add_argument("--obs-mode", choices=["latent", "rgb", "state"], default="latent",
                       help="what the agent sees: latent frames (MlpPolicy; fast), decoded "
                            "RGB frames (CnnPolicy; SB3 only), or the world model's own state "
                            "after the frames so far (MlpPolicy, SB3 only; the agent file "
                            "then carries the world model) (default: latent)")
    train.add_argument("--frame-stack", type=int, default=None,
                       help="observations stacked, oldest first (2: the previous and the "
                            "current frame, so motion is visible) (default: 2; 1 with "
                            "--obs-mode state, which already holds the past)")
    train.add_argument("--denoise-steps", type=int, default=None,
                       help="dream denoising steps per frame (default: the checkpoint's)")
    train.add_argument("--sampler", default="", metavar="KEY=VALUE,...",
                       help="other dream sampler settings over the checkpoint's, e.g. "
                            f"denoise_steps=16,sigma_max=20 (keys: {SAMPLER_KEYS}; --temperature and "
                            "--denoise-steps win over it); `python -m benchmarks.dream_events` "
                            "compares samplers with the real game")
    train.add_argument("--dataset", nargs="+", default=None, metavar="DIR",
                       help="recorded play to start dreams from, one folder or several (an "
                            "episode is drawn from all alike; branch files are never drawn) "
                            "(default: the real opening clips stored in the checkpoint)")
    train.add_argument("--prompt-start", choices=["anywhere", "opening", "decisive"],
                       default="anywhere",
                       help="SB3: where --dataset prompts end: anywhere (a random point of a "
                            "random episode), opening (an episode's start) or decisive (a "
                            "state where the moves' fates differ, from a dataset recorded "
                            "with --branch-steps, each such state alike, with its history) "
                            "(default: anywhere)")
    train.add_argument("--reward", choices=["model", "survival"], default="model",
                       help="SB3: the reward of each dream step: model (the world model's "
                            "reward head, read off the frame it drew) or survival (what the "
                            "real game gives for surviving the step, the same for every "
                            "action: on TakeCover one per tic, so a dream's return counts "
                            "frames survived, as World Models' dreams did) (default: model)")
    train.add_argument("--max-episode-steps", type=int, default=None,
                       help="dream episode cap in agent steps (default: the real game's)")
    train.add_argument("--decision-steps", type=int, default=1, metavar="K",
                       help="SB3: dream steps each chosen action is held for, one agent "
                            "decision per K steps (--steps and --max-episode-steps count "
                            "decisions); with --ends hold and K the hold head's steps (8), "
                            "a decision ends the dream with the head's whole risk for it, "
                            "what the hold-head planner weighs; the agent holds its actions "
                            "K steps on the real game too (default: 1)")
    train.add_argument("--net", choices=["flat", "tokens"], default="flat",
                       help="how the policy network reads its observation: flat (SB3's MLP on "
                            "the flattened observation; default) or tokens (--obs-mode state "
                            "on a model whose hold head reads every token: each token through "
                            "one shared layer first, as the hold head reads them, then the MLP)")
    train.add_argument("--algo-kwarg", action="append", default=[], metavar="KEY=VALUE",
                       help="SB3 algorithm argument, repeatable, e.g. --algo-kwarg n_steps=256 "
                            "--algo-kwarg learning_rate=1e-4 (values parsed as JSON)")
    train.add_argument("--checkpoint-every", type=int, default=20_000,
                       help="SB3: dream steps between resumable checkpoints (CMA-ES saves "
                            "every generation) (default: 20000)")
    train.add_argument("--population", type=int, default=32,
                       help="cmaes: candidates per generation (default: 32)")
    train.add_argument("--rollouts", type=int, default=4,
                       help="cmaes: dream episodes per candidate (default: 4)")
    train.add_argument("--sigma", type=float, default=0.1,
                       help="cmaes: initial step size (default: 0.1)")
    train.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="dream precision (default: fp32)")
    train.add_argument("--device", default="auto",
                       help="where the dream runs: auto, cpu or cuda (default: auto)")
    train.add_argument("--compile", action="store_true",
                       help="compile the world model's transformer blocks (torch.compile): "
                            "faster dream steps after about a minute of compiling; needs a "
                            "C++ compiler on CPU")
    train.add_argument("--real-game", action="store_true",
                       help="SB3: train on the real game instead of the dream, with the same "
                            "observations and step budget (the honest baseline for a "
                            "dream-trained agent)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train_agent)

    evaluate = subparsers.add_parser(
        "eval", help="score an agent (or a baseline) on the real game",
        description="Play seeded episodes of the real game (episode i uses seed S+i) and "
                    "report frames survived: mean, std, median, min, max, with the same "
                    "episode cap for every method. Optionally films the best and the "
                    "worst episode and writes every figure as JSON.")
    evaluate.add_argument("--agent", required=True, help=AGENT_HELP)
    evaluate.add_argument("--env", default=None,
                          help="environment (default: the agent's own; vizdoom/TakeCover for "
                               "baselines)")
    evaluate.add_argument("--episodes", type=int, default=100, help="episodes (default: 100)")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="base seed: episode i is played with seed+i (default: 0)")
    evaluate.add_argument("--max-frames", type=int, default=None,
                          help="VizDoom episode cap in game frames, the same for every method "
                               "(default: the env's, 2100 for TakeCover)")
    evaluate.add_argument("--json", default=None, help="write every figure to this JSON file")
    evaluate.add_argument("--video-dir", default=None,
                          help="film the best and the worst episode there (best.mp4, worst.mp4)")
    evaluate.add_argument("--workers", type=int, default=1,
                          help="processes playing episodes in parallel; the scores do not "
                               "depend on it (default: 1)")
    evaluate.add_argument("--frame-size", default=None,
                          help="frame size as H or HxW (default: the agent's, 64x64)")
    evaluate.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                          help="extra env option, repeatable, e.g. --env-option frame_skip=2 "
                               "(default: the agent's own options)")
    evaluate.add_argument("--dream", default=None, metavar="CHECKPOINT",
                          help="score the agent in this world model's dream instead of the "
                               "real game (dream i seeded with S+i); beside the real score it "
                               "shows how much the agent exploits the dream")
    evaluate.add_argument("--temperature", type=float, default=None,
                          help="with --dream: sampling temperature (default: the checkpoint's)")
    evaluate.add_argument("--sample", action="store_true",
                          help="sample the agent's actions (seeded) instead of taking the "
                               "most likely one")
    evaluate.add_argument("--decision-steps", type=int, default=None, metavar="K",
                          help="steps a trained agent holds each chosen action (default: as "
                               "in its dream, `train-agent --decision-steps`; 1 decides at "
                               "every step)")
    evaluate.add_argument("--keep-bonus", type=float, default=None, metavar="X",
                          help="added to the score (logit or Q-value) of the move a trained "
                               "agent holds each time it decides again, so it keeps its move "
                               "on near ties (default: the agent's own, 0 unless saved with "
                               "one; a planner sets its own with plan:...,keep_bonus=X)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=run_eval)


def run_train_agent(args: argparse.Namespace) -> int:
    from worldsim.errors import ConfigError
    from worldsim.sampler_settings import parse_sampler_settings

    progress = not args.quiet
    sampler = parse_sampler_settings(args.sampler) or None
    if args.frame_stack is None:
        args.frame_stack = 1 if args.obs_mode == "state" else 2
    if args.dataset and len(args.dataset) == 1:  # one folder: recorded as before, so runs resume
        args.dataset = args.dataset[0]
    if args.algo == "cmaes":
        if args.obs_mode != "latent" or args.algo_kwarg or args.real_game \
                or args.decision_steps != 1 or args.expected_ends or args.net != "flat" \
                or args.prompt_start != "anywhere" or args.reward != "model":
            raise ConfigError("cmaes trains a linear controller on latent observations in the "
                              f"dream: drop --obs-mode {args.obs_mode}, --algo-kwarg, "
                              "--decision-steps, --expected-ends, --net, --prompt-start, "
                              "--reward and --real-game")
        from agents.cmaes import train_cmaes

        path = train_cmaes(args.checkpoint, args.out, args.steps, population=args.population,
                           rollouts=args.rollouts, sigma=args.sigma,
                           frame_stack=args.frame_stack, temperature=args.temperature,
                           denoise_steps=args.denoise_steps, dataset=args.dataset,
                           max_episode_steps=args.max_episode_steps, seed=args.seed,
                           precision=args.precision, device=args.device, compile=args.compile,
                           termination_threshold=args.termination_threshold, ends=args.ends,
                           sampler=sampler, progress=progress)
    else:
        from agents.ppo import train_ppo
        from envs.commands import parse_key_values

        path = train_ppo(args.checkpoint, args.out, args.steps, num_envs=args.num_envs,
                         obs_mode=args.obs_mode, temperature=args.temperature, seed=args.seed,
                         algo=args.algo, frame_stack=args.frame_stack,
                         denoise_steps=args.denoise_steps, dataset=args.dataset,
                         max_episode_steps=args.max_episode_steps,
                         algo_kwargs=parse_key_values(args.algo_kwarg, "--algo-kwarg"),
                         checkpoint_every=args.checkpoint_every, precision=args.precision,
                         device=args.device, real_game=args.real_game, compile=args.compile,
                         termination_threshold=args.termination_threshold, ends=args.ends,
                         sampler=sampler, decision_steps=args.decision_steps,
                         expected_ends=args.expected_ends, net=args.net,
                         prompt_start=args.prompt_start, reward=args.reward,
                         progress=progress)
    from agents.training import RunFolder

    record = RunFolder(args.out).read() or {}
    print(f"{path}: {args.algo} agent after {record.get('steps_done', '?')} dream steps "
          f"({record.get('wall_seconds', '?')} s); score it with `worldsim eval --agent "
          f"{args.out}`")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from agents.evaluate import evaluate, evaluate_in_dream
    from envs.commands import parse_env_options
    from worldsim.errors import ConfigError
    from worldsim.utils import write_json_atomic

    if args.dream is not None:
        real_only = {"--env": args.env, "--max-frames": args.max_frames,
                     "--decision-steps": args.decision_steps,
                     "--keep-bonus": args.keep_bonus is not None,
                     "--video-dir": args.video_dir, "--frame-size": args.frame_size,
                     "--env-option": args.env_option, "--sample": args.sample,
                     "--workers": args.workers != 1}
        given = [name for name, value in real_only.items() if value]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to the real game, not to --dream")
        result = evaluate_in_dream(args.agent, args.dream, episodes=args.episodes,
                                   seed=args.seed, temperature=args.temperature,
                                   progress=not args.quiet)
    elif args.temperature is not None:
        raise ConfigError("--temperature applies to dreams: add --dream CHECKPOINT")
    else:
        result = evaluate(args.agent, env=args.env, episodes=args.episodes, seed=args.seed,
                          max_frames=args.max_frames,
                          env_options=parse_env_options(args.env_option, args.frame_size),
                          workers=args.workers, video_dir=args.video_dir,
                          deterministic=not args.sample, progress=not args.quiet,
                          decision_steps=args.decision_steps, keep_bonus=args.keep_bonus)
    print(result.describe())
    for label, path in result.videos.items():
        print(f"{label} episode: {path}")
    if args.json:
        write_json_atomic(args.json, result.to_dict())
        print(f"figures: {args.json}")
    return 0
