"""World model (token encoder, RSSM, token decoder, reward and terminal heads) and actor-critic."""
from .actor_critic import ActorCritic
from .dreamer import Dreamer, NonFiniteLoss
from .rssm import RSSM, State
from .world_model import WorldModel

__all__ = ["ActorCritic", "Dreamer", "NonFiniteLoss", "RSSM", "State", "WorldModel"]
