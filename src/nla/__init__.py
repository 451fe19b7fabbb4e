"""nla: Natural Language Autoencoders for LLM activations.

An NLA explains a residual-stream vector of a *target* model in plain English (the activation
verbalizer, AV) and scores the explanation by reconstructing the vector from it (the activation
reconstructor, AR). See the README for the pipeline and the CLI.
"""

from nla.errors import NLAError
from nla.target import DEFAULT_TARGET, Target, load_target

__version__ = "0.1.0"
__all__ = ["DEFAULT_TARGET", "NLAError", "Target", "load_target", "__version__"]
