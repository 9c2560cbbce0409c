"""The world models (one interface, base.WorldModel: the RSSM, the Transformer, the masked block decoder) and the actor-critic."""
from .actor_critic import ActorCritic
from .base import WorldModel
from .dreamer import WORLD_MODELS, Dreamer, NonFiniteLoss
from .maskgit import MaskGITWorldModel
from .rssm import RSSM, State
from .rssm_world_model import RSSMWorldModel
from .transformer import TransformerWorldModel

__all__ = ["ActorCritic", "Dreamer", "MaskGITWorldModel", "NonFiniteLoss", "RSSM", "RSSMWorldModel", "State", "TransformerWorldModel",
           "WORLD_MODELS", "WorldModel"]
