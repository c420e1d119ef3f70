"""prototokens: one-step text generation with frozen language models.

    >>> import prototokens as pt
    >>> lm = pt.load_model("smollm2-135m")
    >>> fit = pt.fit(lm, ["The quick brown fox jumps over the lazy dog."])
    >>> fit.rows[0].accuracy, pt.decode_text(lm, fit)
"""

__version__ = "0.1.0"

from .api import decode_text, fit  # noqa: E402
from .arrangements import ARRANGEMENTS, Arrangement, get_arrangement  # noqa: E402
from .artefacts import ProtoTokens, RowResult  # noqa: E402
from .baseline import MemoryFit, evaluate_memory, fit_memory, greedy_decode  # noqa: E402
from .decoding import decode, decode_ids, evaluate, token_margins  # noqa: E402
from .engine import fit_token_ids  # noqa: E402
from .errors import PrototokensError  # noqa: E402
from .loading import FrozenLM, dtype_name, load_model  # noqa: E402
from .metrics import lm_cross_entropy  # noqa: E402
from .recipes import RECIPES, Recipe, get_recipe  # noqa: E402
from .snapshots import Snapshots  # noqa: E402

__all__ = [
    "ARRANGEMENTS", "Arrangement", "FrozenLM", "ProtoTokens", "PrototokensError", "RECIPES", "Recipe",
    "MemoryFit", "Snapshots", "RowResult", "decode", "evaluate_memory", "fit_memory", "greedy_decode", "decode_ids", "decode_text", "evaluate", "token_margins", "fit", "fit_token_ids",
    "dtype_name", "get_arrangement", "get_recipe", "lm_cross_entropy", "load_model",
]
