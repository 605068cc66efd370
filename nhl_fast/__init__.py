"""nhl_fast: fast nested multi-length deep hashing (the Nested Hash Layer) for PyTorch."""
from nhl_fast._dispatch import BackendUnavailable, build_info
from nhl_fast.engine import hamming, pack, topk, unpack

__all__ = ["pack", "unpack", "hamming", "topk", "build_info", "BackendUnavailable"]
__version__ = "0.1.0"

# --- layer and objective ---
from nhl_fast.layers import NestedCodes, NestedHashLayer  # noqa: E402
from nhl_fast.objective import NHLObjective  # noqa: E402

__all__ += ["NestedHashLayer", "NestedCodes", "NHLObjective"]
