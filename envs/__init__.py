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

# The dream env (envs/dream.py) by string entry points, so `import envs` imports no torch:
# gymnasium.make("worldsim/Dream-v0", checkpoint=...) and, batched,
# gymnasium.make_vec("worldsim/Dream-v0", num_envs=N, vectorization_mode="vector_entry_point").
import gymnasium as _gymnasium

DREAM_ENV_ID = "worldsim/Dream-v0"
if DREAM_ENV_ID not in _gymnasium.registry:
    _gymnasium.register(DREAM_ENV_ID, entry_point="envs.dream:DreamEnv",
                        vector_entry_point="envs.dream:DreamVectorEnv")
__all__.append("DREAM_ENV_ID")
