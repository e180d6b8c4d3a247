"""Real games (and a fake one) as Gymnasium envs that observe RGB frames.

``make_env(name, **options)`` builds one; ``list_envs()`` says what exists. VizDoom and
Crafter are imported only when such an env is made, so ``import envs`` stays cheap.
"""

from envs.crafter_env import crafter_score, crafter_success_rates
from envs.fake import FakeImageEnv
from envs.registry import EnvInfo, list_envs, make_env

__all__ = [
    "EnvInfo",
    "FakeImageEnv",
    "crafter_score",
    "crafter_success_rates",
    "list_envs",
    "make_env",
]
