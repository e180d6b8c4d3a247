"""worldsim: action-conditioned video diffusion world models as simulators.

The model library. It never imports a game or an RL library: real games live in ``envs``,
agents in ``agents``; the ``worldsim`` CLI is the front door that wires them together.

Axis letters, used in every shape comment, einops pattern and docstring:

==========  ====================================================
``B``       batch (independent episodes or dreams)
``T``       time: frames of a clip or segment
``C``       image channels (3, RGB)
``H W``     frame height and width in pixels
``c``       latent channels
``h w``     latent grid height and width
``N``       tokens (spacetime patches)
``D``       transformer hidden width
``A``       number of discrete actions
``S``       key/value cache slots (frames held by a dream's cache)
``heads``   attention heads; ``Dh`` the width of one head
``pt ph pw``  a spacetime patch: frames, latent rows, latent columns
==========  ====================================================

Time convention for transitions: ``actions[t]`` is the action *taken after seeing*
``frames[t]``; ``rewards[t]`` and ``terminated[t]`` are its outcome, observed in
``frames[t + 1]``. An episode of ``T`` steps stores ``T + 1`` frames.
"""

__version__ = "0.1.0"
