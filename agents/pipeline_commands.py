"""CLI subcommand for the whole job: ``worldsim run takecover``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="the whole job in one command: collect, world model, agents, eval, report",
        description="Run the whole job: record sticky-random real play, train the world model, "
                    "train agents entirely in its dream (PPO; DQN on the world model's state in "
                    "one-decision dreams ended by its hold head; CMA-ES's linear controller "
                    "where the preset says so), record branches of the real play and fit the world "
                    "model's hold head to them, score the agents on the real game beside the "
                    "planner over that head and the random and always-left baselines (same seeded episodes, cap 2100 frames for every "
                    "method) and in the dream at several temperatures (the exploit gap), "
                    "measure the world model's fidelity, film real vs dream, and write "
                    "OUT/report.md with plots and OUT/results.json. Prints a time estimate "
                    "up front. Resumable at every stage: re-running the same command skips "
                    "finished stages and continues the interrupted one (also after kill -9).")
    parser.add_argument("job", choices=["takecover"],
                        help="the job: takecover (VizDoom TakeCover, World Models' benchmark)")
    parser.add_argument("--preset", choices=["tiny", "small", "base"], default="small",
                        help="budgets of every stage and the world-model preset: tiny (a toy "
                             "run in ~1-3 min, for tests), small (a 2-core CPU, <= 2 hours), "
                             "base (one GPU) (default: small)")
    parser.add_argument("--out", default=None,
                        help="run folder, created or resumed (default: runs/JOB, e.g. "
                             "runs/takecover)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds collection (episode i: seed+i), training and dreams; the "
                             "evaluation episodes are the same for every seed (default: 0)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="real episodes to record for the world model (default: the "
                             "preset's: tiny 6, small 2500, base 10000)")
    parser.add_argument("--branch-episodes", type=int, default=None, metavar="N",
                        help="replay the first N recorded episodes with every action held 8 "
                             "steps from their decisive states (real play), fit the world "
                             "model's hold head (which held move survives) on them, and score "
                             "the planner that plays by it (plan-hold: no agent, no dream) "
                             "beside the others; 0 leaves these stages out (default: the "
                             "preset's: tiny 6, small 2500, base 10000)")
    parser.add_argument("--hold-head", choices=("tokens", "mean"), default=None,
                        help="what the hold head reads of each frame: every token (tokens; the "
                             "model's state, what dqn-hold observes, is then the flattened "
                             "tokens) or their mean (mean: smaller, measured 0.874 against "
                             "0.905 held-out choice) (default: tokens)")
    parser.add_argument("--hold-members", type=int, default=None, metavar="K",
                        help="fit the hold head K times from consecutive seeds on the same "
                             "states and read their mean chance (steadier at near ties; each "
                             "fit costs seconds, the states are read once) (default: the "
                             "preset's: tiny 2, small 5, base 5)")
    parser.add_argument("--frame-skip", type=int, default=None,
                        help="game tics per step, the action held throughout, for the world "
                             "model, the agents and the evaluation; scores stay in tics "
                             "(default: 4)")
    parser.add_argument("--agent-steps", type=int, default=None,
                        help="PPO steps in the dream, summed over the batch of dreams "
                             "(default: the preset's: tiny 768, small 500000, base 5000000)")
    parser.add_argument("--agent-temperature", type=float, default=None,
                        help="dream sampling temperature while agents train: higher launches "
                             "more fireballs; 1.0 is the model's own distribution (default: "
                             "1.5, where the calibrated dream shows the game's fireball rate)")
    parser.add_argument("--dqn-steps", type=int, default=None, metavar="N",
                        help="decisions of the dqn-hold agent: DQN on the world model's state, "
                             "each decision a fresh dream from a recorded real prompt, its "
                             "move held 8 steps and scored by the hold head's chance to "
                             "survive it (default: the preset's: tiny 96, small 60000, base "
                             "200000)")
    parser.add_argument("--agents", default=None,
                        help="comma-separated agents to train: ppo (in the dream), dqn-hold "
                             "(see --dqn-steps; needs the hold head, --branch-episodes above "
                             "0), cmaes (linear controller, in the dream), ppo-real (PPO on "
                             "the real game with the same steps: the honest baseline) "
                             "(default: the preset's: tiny ppo,cmaes,dqn-hold, small "
                             "ppo,dqn-hold, base all four)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="real-game episodes per method, the same seeds for every method "
                             "(default: the preset's: tiny 3, small and base 100)")
    parser.add_argument("--device", default="auto",
                        help="where models run: auto (a GPU if there is one), cpu or cuda; may "
                             "differ between a run and its resumption (default: auto)")
    parser.add_argument("--plan", action="store_true",
                        help="print the stages, what is done and the time estimate, then stop")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite OUT/report.md and OUT/results.json from what the "
                             "run folder holds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_job)


def run_job(args: argparse.Namespace) -> int:
    from agents.pipeline import Pipeline, run_config
    from agents.report import write_report

    out = args.out or f"runs/{args.job}"
    if args.report_only:
        write_report(out)
        print(f"wrote {out}/report.md and {out}/results.json")
        return 0
    agents = tuple(a.strip() for a in args.agents.split(",") if a.strip()) if args.agents else None
    config = run_config(args.preset, seed=args.seed, episodes=args.episodes,
                        branch_episodes=args.branch_episodes,
                        hold_tokens=None if args.hold_head is None else args.hold_head == "tokens",
                        hold_members=args.hold_members,
                        frame_skip=args.frame_skip, agent_steps=args.agent_steps,
                        dqn_steps=args.dqn_steps, agents=agents,
                        agent_temperature=args.agent_temperature,
                        eval_episodes=args.eval_episodes, device=args.device)
    pipeline = Pipeline(out, config, args.job, progress=not args.quiet)
    if args.plan:
        print(pipeline.plan())
        return 0
    pipeline.run()
    return 0
