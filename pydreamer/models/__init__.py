"""The world models (one interface, base.WorldModel: the RSSM, the Transformer) and the actor-critic."""
from .actor_critic import ActorCritic
from .base import WorldModel
from .dreamer import WORLD_MODELS, Dreamer, NonFiniteLoss
from .rssm import RSSM, State
from .rssm_world_model import RSSMWorldModel
from .transformer import TransformerWorldModel

__all__ = ["ActorCritic", "Dreamer", "NonFiniteLoss", "RSSM", "RSSMWorldModel", "State", "TransformerWorldModel",
           "WORLD_MODELS", "WorldModel"]
