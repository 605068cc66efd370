"""The `nhl-fast` command (also `python -m nhl_fast`): train, eval, encode, compare, demo, bench.

`nhl-fast train` with no arguments trains a small MLP + NestedHashLayer on scikit-learn's
digits and prints the mAP of every code length; `nhl-fast demo` tours the Hamming engine
(pack, every length's distances in one pass, exact top-k, timings) on random codes.
Option errors print one line, `nhl-fast COMMAND: error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

USAGE_ERRORS = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose option errors are one line (not the whole usage first), exit status 2."""

    commands: dict = {}  # the subcommands' parsers, by name (set on the top-level parser)

    def error(self, message: str):
        self.exit(USAGE_ERRORS, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:  # argparse blames the top-level parser: name the subcommand these are not options of
            self.commands.get(getattr(ns, "command", None), self).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns


def parse_bits(text: str) -> tuple:
    from nhl_fast._checks import increasing_lengths  # the library's one check of code lengths

    try:
        bits = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 8,16,32,64,128, got {text!r}")
    try:
        return increasing_lengths(bits, "--bits")
    except ValueError:  # the option's own words, not the library's
        raise argparse.ArgumentTypeError(f"lengths must be positive and strictly increasing, got {text!r}") from None


def parse_topk(text: str) -> Optional[int]:
    if text.lower() in ("all", "none", "0"):
        return None
    return _positive(text, f"expected a positive integer or 'all', got {text!r}")


def positive_int(text: str) -> int:
    return _positive(text, f"expected a positive integer, got {text!r}")


def _positive(text: str, message: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if value < 1:
        raise argparse.ArgumentTypeError(message)
    return value


def _data_args(p: argparse.ArgumentParser, default: Optional[str] = "digits") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default,
                   help="'digits' (scikit-learn, built in), a feature file (.npz/.npy/.pt/.safetensors with "
                        "'features' and 'labels'), or a directory of DeepHash image lists (train.txt, test.txt, "
                        "database.txt)" + ("" if default else "; default: the data the checkpoint was trained on"))
    g.add_argument("--split", help="JSON split file for feature data: {\"train\": [...], \"query\": [...], "
                                   "\"database\": [...]} row indices (default: split.json next to the features)")
    g.add_argument("--image-root", help="prefix for relative image paths in the lists (default: the list's directory)")
    g.add_argument("--resize", type=positive_int, default=256,
                   help="images: shorter side resized to this (default: %(default)s)")
    g.add_argument("--crop", type=positive_int, default=224,
                   help="images: square crop, random when training (default: %(default)s)")
    g.add_argument("--workers", type=int, default=0,
                   help="data-loading worker processes for image lists (default: %(default)s, load in this process)")


def _run_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="examples per batch (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines, only results")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topk", type=parse_topk, default=None, help="mAP@k (default: all = full ranking)")
    p.add_argument("--ties", choices=("index", "average"), default="index",
                   help="index: rank ties by database index; average: tie-aware mAP (default: %(default)s)")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and objective")
    g.add_argument("--bits", type=parse_bits, default="8,16,32,64,128",
                   help="nested code lengths, comma-separated and increasing; each code is a prefix of the "
                        "next (default: %(default)s)")
    g.add_argument("--base-loss", default="csq", help="base deep-hashing loss of every length (default: %(default)s)")
    g.add_argument("--backbone", default=None,
                   help="mlp (default for digits), cnn (default for image lists), identity (default for features), "
                        "or a torchvision model (resnet18, resnet50, alexnet, vit_b_16) when torchvision is installed")
    g.add_argument("--weights", help="local pretrained weights for a torchvision backbone (never downloaded)")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default 20; with --resume: the interrupted run's)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=1e-5, help="Adam weight decay (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed of initialisation and shuffling; compare uses seed, seed+1, ... "
                        "(default: %(default)s)")


def _unsupervised_args(p: argparse.ArgumentParser) -> None:
    from nhl_fast.app.unsupervised import parse_loss_opt

    g = p.add_argument_group("unsupervised (two views, no labels in training)")
    g.add_argument("--unsupervised", action="store_true",
                   help="train without labels (they only evaluate): two random views per batch, a loss without "
                        "labels (--base-loss cibhash, greedyhash, bihalf or sortednce)")
    g.add_argument("--views", choices=("auto", "image", "features", "none"), default="auto",
                   help="the random views: image (affine + crop + noise), features (noise + feature dropout), "
                        "auto (by the data's kind) (default: %(default)s)")
    g.add_argument("--memory", type=int, default=0,
                   help="rows of the shared code memory of extra negatives, for the losses that keep one "
                        "(default: %(default)s, none)")
    g.add_argument("--warmup-epochs", type=int, default=0,
                   help="epochs before the code memory is used (default: %(default)s)")
    g.add_argument("--loss-opt", type=parse_loss_opt, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the base loss, e.g. temperature=0.2 (repeatable; default: the published ones)")


def build_parser() -> argparse.ArgumentParser:
    from nhl_fast import __version__

    parser = _Parser(prog="nhl-fast", description="Nested multi-length deep hashing (NHL): "
                     "train, evaluate, encode and compare models; tour and benchmark the engine.")
    parser.add_argument("--version", action="version", version=f"nhl-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train backbone + NestedHashLayer, evaluate mAP per length",
                       description="Train a backbone + NestedHashLayer with NHLObjective and print the mAP of every "
                                   "code length. With no arguments: scikit-learn's digits, an MLP backbone, 20 "
                                   "epochs: about 10 seconds on a CPU, start-up included.")
    _data_args(p)
    _model_args(p)
    g = p.add_argument_group("NHL objective")
    g.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True,
                   help="dominance-aware adaptive per-length weights (default: %(default)s)")
    g.add_argument("--distill", type=float, default=0.1,
                   help="long-short cascade self-distillation weight, 0: off (default: %(default)s)")
    g.add_argument("--beta", type=float, default=1.0, help="adaptive-weight threshold scale (default: %(default)s)")
    g.add_argument("--weight-rule", choices=("bounded", "dominance", "pcgrad"), default=None,
                   help="adaptive weight rule: bounded (worst conflict, floored, smoothed), dominance (the "
                        "paper's product rule) or pcgrad (conflicting per-length gradients projected off each "
                        "other, PCGrad) (default: bounded; dominance with --faithful)")
    g.add_argument("--centers", choices=("joint", "nested", "per_length"), default=None,
                   help="centres of a centre loss (csq, dpn, mdsh, shcir): joint (every prefix separated at once), "
                        "nested (greedy), per_length (the reference's) (default: joint; per_length with --faithful)")
    g.add_argument("--length-scale", choices=("mean", "sqrt_bits", "bits", "backbone_bits", "inv_bits"),
                   default="mean",
                   help="per-length losses as defined (mean), or times b_k^p / mean(b^p) with p = 1/2 (sqrt_bits) "
                        "or 1 (bits) or -1 (inv_bits), or bits for the backbone's gradient only (backbone_bits) "
                        "(default: %(default)s)")
    g.add_argument("--faithful", action="store_true", help="reproduce the reference implementation's step")
    _eval_args(p)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (default: ~5 times per run)")
    p.add_argument("--out", help="run directory (default: runs/<data>, numbered if it exists)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue an interrupted run (default: <out>/last.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to name a directory holding a run")
    _unsupervised_args(p)
    _run_args(p, batch_size=64)

    p = sub.add_parser("eval", help="mAP, precision@radius and PR curves of a checkpoint")
    p.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory (uses best.safetensors)")
    _data_args(p, default=None)
    _eval_args(p)
    p.add_argument("--radius", type=int, default=2, help="Hamming radius of precision@radius (default: %(default)s)")
    p.add_argument("--out", help="JSON results (default: eval.json next to the checkpoint)")
    _run_args(p, batch_size=256)

    p = sub.add_parser("encode", help="packed codes + labels of a split, to a safetensors file")
    p.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory (uses best.safetensors)")
    _data_args(p, default=None)
    p.add_argument("--which", choices=("database", "query", "train"), default="database",
                   help="split to encode (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .safetensors (codes int64 (N, W), labels (N, C))")
    _run_args(p, batch_size=256)

    p = sub.add_parser("compare", help="K single-length heads vs one NHL head, over seeds",
                       description="The NHL paper's headline experiment: K independently trained single-length "
                                   "models vs one nested head (with/without adaptive weights and distillation).")
    _data_args(p)
    _model_args(p)
    p.add_argument("--distill", type=float, default=0.1,
                   help="distillation weight of the +distill variants (default: %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per method (default: %(default)s)")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of independent, nhl, nhl+adaptive, nhl+distill, nhl+adaptive+distill "
                        "(default: all), and with --unsupervised the baselines lsh, itq (default then: "
                        "independent,nhl+adaptive+distill,lsh,itq)")
    _unsupervised_args(p)
    _eval_args(p)
    p.add_argument("--out", default="runs/compare",
                   help="directory for compare.md / compare.json / plots (default: %(default)s)")
    _run_args(p, batch_size=64)

    p = sub.add_parser("demo", help="a tour of the Hamming engine on random codes (pack, distances, top-k, timings)",
                       description="Pack random 128-bit codes, print every nested length's (8..128 bits) distances "
                                   "from one pass and the exact top-k per length, and time the one-pass engine "
                                   "against a single length. Needs only the library (torch and numpy).")
    p.add_argument("--n", type=positive_int, default=200_000,
                   help="database codes for the top-k and timing part (default: %(default)s)")
    p.add_argument("--queries", type=positive_int, default=100, help="queries (default: %(default)s)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: %(default)s)")
    p.add_argument("--backend", default=None, help="cpp, cuda, triton or torch (default: the fastest available)")

    p = sub.add_parser("bench", help="run the benchmark scripts bench/bench_*.py of a source checkout",
                       description="Run the benchmark scripts bench/bench_*.py; each writes bench/results/<name>.json "
                                   "(--quick: <name>_quick.json, never the committed full results). The scripts are "
                                   "part of the source repository, not of the installed package: run this from a "
                                   "git clone (or pass --dir).")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test), results in <name>_quick.json")
    p.add_argument("--only", help="comma-separated script names (e.g. bench_map)")
    p.add_argument("--device", default=None, help="passed to every script (cpu or cuda)")
    p.add_argument("--dir", default=None,
                   help="benchmark directory (default: bench/ of the source tree nhl_fast runs from, else ./bench)")
    p.add_argument("--quiet", "-q", action="store_true", help="hide the scripts' output, print only the summary")
    parser.commands = sub.choices
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import nhl_fast as nf
    from nhl_fast.app import commands
    from nhl_fast.app.backbones import BackboneError
    from nhl_fast.app.checkpoint import CheckpointError
    from nhl_fast.app.data import DataError

    try:
        return getattr(commands, f"cmd_{args.command}")(args)
    except (DataError, CheckpointError, BackboneError, commands.CommandError, nf.BackendUnavailable, FileExistsError,
            ValueError) as e:  # ValueError: bad options caught by the library's own validation
        print(f"nhl-fast {args.command}: error: {e}", file=sys.stderr)
        return USAGE_ERRORS


if __name__ == "__main__":
    sys.exit(main())
