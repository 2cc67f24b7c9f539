"""samkit: Sharpness-Aware Minimization done right, and the tools to study when it helps."""
from .bn import bn_frozen
from .models import MLP, PreActResNet18, count_params, one_hidden_relu
from .sam import SAM
from .sam_variants import LookSAM, MomentumSAM

__all__ = ["SAM", "LookSAM", "MomentumSAM", "bn_frozen", "PreActResNet18", "MLP", "one_hidden_relu", "count_params"]
__version__ = "0.1.0"
