"""nhl_fast: fast nested multi-length deep hashing (the Nested Hash Layer) for PyTorch."""
from nhl_fast._dispatch import BackendUnavailable, build_info
from nhl_fast.engine import hamming, pack, topk, unpack

__all__ = ["pack", "unpack", "hamming", "topk", "build_info", "BackendUnavailable"]
__version__ = "0.1.0"
