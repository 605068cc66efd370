"""nhl_fast: fast nested multi-length deep hashing (the Nested Hash Layer) for PyTorch.

Importing it loads the compiled extension (nhl_fast._C, through _dispatch.extension(): its op schemas and
kernels) and nhl_fast._ops (fakes, autograd, the Triton custom ops), so every torch.ops.nhl_fast.<op> and
torch.ops.nhl_fast.<op>_triton works right after ``import nhl_fast``.
"""
from nhl_fast import _ops  # noqa: F401  (loads nhl_fast._C through _dispatch.extension(), then registers)
from nhl_fast._dispatch import BackendUnavailable, build_info
from nhl_fast.engine import empty_cache, hamming, pack, topk, unpack
from nhl_fast.index import NestedHammingIndex
from nhl_fast.mih import MultiIndexHammingIndex
from nhl_fast.layers import NestedCodes, NestedHashLayer
from nhl_fast.metrics import (
    mean_average_precision,
    precision_at_k,
    precision_at_radius,
    precision_recall_curve,
    recall_at_k,
)
from nhl_fast.objective import NHLObjective
from nhl_fast import augment, baselines  # noqa: E402  unsupervised hashing: views, LSH / ITQ
from nhl_fast import distributed  # noqa: E402  (nf.distributed: sharded search and evaluation, DDP helpers)

__all__ = [
    "pack", "unpack", "hamming", "topk", "empty_cache", "build_info", "BackendUnavailable",
    "NestedHashLayer", "NestedCodes", "NHLObjective",
    "mean_average_precision", "precision_at_radius", "precision_recall_curve", "precision_at_k", "recall_at_k",
    "NestedHammingIndex", "MultiIndexHammingIndex", "distributed",
]
__version__ = "0.1.0"
