"""nhl_fast: fast nested multi-length deep hashing (the Nested Hash Layer) for PyTorch."""
from nhl_fast._dispatch import BackendUnavailable, build_info
from nhl_fast.engine import hamming, pack, topk, unpack

__all__ = ["pack", "unpack", "hamming", "topk", "build_info", "BackendUnavailable"]
__version__ = "0.1.0"

# --- layer and objective ---
from nhl_fast.layers import NestedCodes, NestedHashLayer  # noqa: E402
from nhl_fast.objective import NHLObjective  # noqa: E402

__all__ += ["NestedHashLayer", "NestedCodes", "NHLObjective"]

# --- metrics ---
from nhl_fast.metrics import (  # noqa: E402
    mean_average_precision,
    precision_at_k,
    precision_at_radius,
    precision_recall_curve,
    recall_at_k,
)

__all__ += ["mean_average_precision", "precision_at_radius", "precision_recall_curve", "precision_at_k", "recall_at_k"]
