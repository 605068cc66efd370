"""Direct torch.ops.nhl_fast.<op> calls with bad input, past every Python check: the C++ glue
(csrc/checks.h, shared by the CPU ops and the CUDA glue) raises TypeError for a wrong dtype and
ValueError for a wrong shape or value, never RuntimeError, and names the argument. Every op in
csrc/nhl_ops.cpp has cases; the CUDA leg runs the same cases on the GPU when one is lent."""
import importlib
import importlib.util
import pathlib
import re

import pytest
import torch

import nhl_fast  # noqa: F401  (loads the compiled extension)
from nhl_fast._dispatch import not_supported_reasons

# the fakes / autograd registrations: nhl_fast._ops (nhl_fast.ops before its rename), not needed
# by these eager calls but imported as any user of torch.ops.nhl_fast would have it
for _name in ("nhl_fast._ops", "nhl_fast.ops"):
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
        break

pytestmark = pytest.mark.skipif(bool(not_supported_reasons("cpp", torch.device("cpu"))),
                                reason="the C++ extension is not built")

OPS_CPP = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "nhl_ops.cpp"
CUDA_OPS = {"pack", "unpack", "hamming", "topk", "nested_projection", "project_and_pack", "distance_histogram",
            "index_ap"}  # the ops with a csrc/cuda/<op>_cuda.cu
BITS = [8, 16, 32]


def _packed(n, words, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**62, 2**62, (n, words), generator=g, dtype=torch.int64)


def _inputs():
    q, db = _packed(3, 2, 0), _packed(10, 2, 1)
    ql, dl = torch.tensor([0, 1, 2]), torch.arange(10) % 3
    u = torch.randn(6, 32, dtype=torch.float64)
    grads, losses, x = torch.randn(6, sum(BITS), dtype=torch.float64), torch.rand(3, dtype=torch.float64), \
        torch.randn(6, 5, dtype=torch.float64)
    labels = (torch.rand(6, 4) < 0.5).double()
    centers = torch.randn(4, sum(BITS), dtype=torch.float64).sign()
    tie = torch.ones(sum(BITS), dtype=torch.float64)
    xp, w, b = torch.randn(4, 5), torch.randn(16, 5), torch.randn(16)
    tot = torch.randint(0, 5, (2, 3, 9))
    return dict(q=q, db=db, ql=ql, dl=dl, u=u, grads=grads, losses=losses, x=x, labels=labels, centers=centers,
                tie=tie, xp=xp, w=w, b=b, tot=tot, rel=tot.clone())


def _objective(t, u="u", grads="grads", losses="losses", x="x", deriv=None, bits=BITS, beta=1.0, distill=0.1,
               closed_form=True):
    pick = lambda v: t[v] if isinstance(v, str) else v  # noqa: E731
    return (pick(u), pick(grads), pick(losses), pick(x), pick(deriv), bits, beta, distill, False, closed_form)


# (op, args from the inputs, exception, argument named in the message)
CASES = [
    # --- pack(codes)
    ("pack", lambda t: (torch.ones(3, 8, dtype=torch.int32),), TypeError, "codes"),
    ("pack", lambda t: (torch.ones(8),), ValueError, "codes"),
    # --- unpack(packed, bits)
    ("unpack", lambda t: (t["db"].int(), 8), TypeError, "packed"),
    ("unpack", lambda t: (t["db"][0], 8), ValueError, "packed"),
    ("unpack", lambda t: (t["db"], 129), ValueError, r"bits=\[129\] must be in \[1, 64\*W\] = \[1, 128\]"),
    ("unpack", lambda t: (t["db"], 0), ValueError, "bits"),
    # --- hamming(q, db, bits)
    ("hamming", lambda t: (t["q"].int(), t["db"], BITS), TypeError, "q must be int64"),
    ("hamming", lambda t: (t["q"], t["db"].float(), BITS), TypeError, "db must be int64"),
    ("hamming", lambda t: (t["q"][0], t["db"], BITS), ValueError, "q must be 2-D"),
    ("hamming", lambda t: (t["q"], t["db"][:, :1], BITS), ValueError, "q and db must have the same number of words"),
    ("hamming", lambda t: (t["q"], t["db"][:, :0], BITS), ValueError, "db must have at least one word"),
    ("hamming", lambda t: (t["q"], t["db"], [16, 8]), ValueError, "bits=.* strictly increasing"),
    ("hamming", lambda t: (t["q"], t["db"], [64, 129]), ValueError, r"bits=.*\[1, 64\*W\] = \[1, 128\]"),
    ("hamming", lambda t: (t["q"], t["db"], []), ValueError, "bits must not be empty"),
    # --- topk(q, db, k, bits)
    ("topk", lambda t: (t["q"].int(), t["db"], 2, BITS), TypeError, "q must be int64"),
    ("topk", lambda t: (t["q"], t["db"].double(), 2, BITS), TypeError, "db must be int64"),
    ("topk", lambda t: (t["q"], t["db"][0], 2, BITS), ValueError, "db must be 2-D"),
    ("topk", lambda t: (t["q"], t["db"][:, :1], 2, BITS), ValueError, "same number of words"),
    ("topk", lambda t: (t["q"], t["db"], 11, BITS), ValueError, r"k=11 must be in \[1, N\] with N=10"),
    ("topk", lambda t: (t["q"], t["db"], 0, BITS), ValueError, "k=0"),
    ("topk", lambda t: (t["q"], t["db"], 2, [8, 8]), ValueError, "bits=.* strictly increasing"),
    ("topk", lambda t: (t["q"], t["db"], 2, [200]), ValueError, "bits=.*128"),
    # --- nested_projection(x, weight, bias, relax)
    ("nested_projection", lambda t: (t["xp"].long(), t["w"].long(), t["b"].long(), "tanh"), TypeError, "x must be"),
    ("nested_projection", lambda t: (t["xp"], t["w"].double(), t["b"], "tanh"), TypeError, "weight must have x's dtype"),
    ("nested_projection", lambda t: (t["xp"], t["w"], t["b"].half(), "tanh"), TypeError, "bias must have x's dtype"),
    ("nested_projection", lambda t: (t["xp"][0], t["w"], t["b"], "tanh"), ValueError, "x must be 2-D"),
    ("nested_projection", lambda t: (t["xp"], t["w"][:, 1:], t["b"], "tanh"), ValueError, "x has 5 features"),
    ("nested_projection", lambda t: (t["xp"], t["w"], t["b"][1:], "tanh"), ValueError, "bias must have b_max=16"),
    ("nested_projection", lambda t: (t["xp"], t["w"], t["b"], "relu"), ValueError, "relax must be one of"),
    # --- project_and_pack(x, weight, bias)
    ("project_and_pack", lambda t: (t["xp"].int(), t["w"].int(), t["b"].int()), TypeError, "x must be"),
    ("project_and_pack", lambda t: (t["xp"], t["w"].double(), t["b"]), TypeError, "weight must have x's dtype"),
    ("project_and_pack", lambda t: (t["xp"], t["w"][0], t["b"]), ValueError, "weight must be 2-D"),
    ("project_and_pack", lambda t: (t["xp"], t["w"], t["b"][None]), ValueError, "bias must be 1-D"),
    ("project_and_pack", lambda t: (t["xp"], t["w"][:, :3], t["b"]), ValueError, "features"),
]

for _op in ("distance_histogram", "index_ap"):
    _extra = (None,) if _op == "index_ap" else ()
    CASES += [
        (_op, lambda t, e=_extra: (t["q"].int(), t["db"], t["ql"], t["dl"], BITS) + e, TypeError, "q must be int64"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"].float(), t["dl"], BITS) + e, TypeError, "q_labels must be int64"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"], t["dl"].int(), BITS) + e, TypeError, "db_labels must be int64"),
        (_op, lambda t, e=_extra: (t["q"], t["db"][:, :1], t["ql"], t["dl"], BITS) + e, ValueError, "same number of words"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"][1:], t["dl"], BITS) + e, ValueError, "q_labels must have one row per query"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"], t["dl"][1:], BITS) + e, ValueError, "db_labels must have one row"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"][:, None], t["dl"], BITS) + e, ValueError, "db_labels must be 2-D like q_labels"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"][:, None], t["dl"][:, None].repeat(1, 2), BITS) + e, ValueError,
         "q_labels and db_labels must have the same number"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"][:, None, None], t["dl"][:, None, None], BITS) + e, ValueError, "q_labels must be 1-D"),
        (_op, lambda t, e=_extra: (t["q"], t["db"][:0], t["ql"], t["dl"][:0], BITS) + e, ValueError, "db must hold 1"),
        (_op, lambda t, e=_extra: (_packed(3, 65, 2), _packed(10, 65, 3), t["ql"], t["dl"], BITS) + e, ValueError, "at most 64 words"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"], t["dl"], [16, 8]) + e, ValueError, "bits=.* strictly increasing"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"], t["dl"], [8, 130]) + e, ValueError, r"bits=.*\[1, 64\*W\]"),
        (_op, lambda t, e=_extra: (t["q"], t["db"], t["ql"], t["dl"], list(range(1, 66))) + e, ValueError, "bits must hold at most 64"),
    ]
CASES += [
    ("index_ap", lambda t: (t["q"], t["db"], t["ql"], t["dl"], BITS, 0), ValueError, r"topk=0 must be in \[1, N\]"),
    ("index_ap", lambda t: (t["q"], t["db"], t["ql"], t["dl"], BITS, 11), ValueError, "topk=11"),
    # --- tie_ap(tot, rel, topk)
    ("tie_ap", lambda t: (t["tot"].float(), t["rel"], None), TypeError, "tot must be int64"),
    ("tie_ap", lambda t: (t["tot"], t["rel"].int(), None), TypeError, "rel must be int64"),
    ("tie_ap", lambda t: (t["tot"][0], t["rel"][0], None), ValueError, "tot must be 3-D"),
    ("tie_ap", lambda t: (t["tot"], t["rel"][:, 1:], None), ValueError, "rel must have shape"),
    ("tie_ap", lambda t: (t["tot"], t["rel"], 0), ValueError, "topk=0"),
    # --- cascade_distill(u, bits)
    ("cascade_distill", lambda t: (t["u"].long(), BITS), TypeError, "u must be float32 or float64"),
    ("cascade_distill", lambda t: (t["u"][0], BITS), ValueError, "u must be 2-D"),
    ("cascade_distill", lambda t: (t["u"], [8, 16]), ValueError, "bits=.* must end at u's width"),
    ("cascade_distill", lambda t: (t["u"], [16, 8, 32]), ValueError, "bits=.* strictly increasing"),
    ("cascade_distill", lambda t: (t["u"], [8, 40]), ValueError, r"bits=.*\[1, b_max\]"),
    ("cascade_distill", lambda t: (t["u"], [32]), ValueError, "bits=.* at least 2"),
    # --- csq_grads(u, labels, centers, tie, bits, lambda_)
    ("csq_grads", lambda t: (t["u"].half(), t["labels"], t["centers"], t["tie"], BITS, 1e-4), TypeError, "u must be"),
    ("csq_grads", lambda t: (t["u"], t["labels"].float(), t["centers"], t["tie"], BITS, 1e-4), TypeError, "labels must have u's dtype"),
    ("csq_grads", lambda t: (t["u"], t["labels"], t["centers"].float(), t["tie"], BITS, 1e-4), TypeError, "centers must have u's dtype"),
    ("csq_grads", lambda t: (t["u"], t["labels"], t["centers"], t["tie"].float(), BITS, 1e-4), TypeError, "tie must have u's dtype"),
    ("csq_grads", lambda t: (t["u"], t["labels"][1:], t["centers"], t["tie"], BITS, 1e-4), ValueError, "labels must be"),
    ("csq_grads", lambda t: (t["u"], t["labels"], t["centers"][:, 1:], t["tie"][1:], BITS, 1e-4), ValueError, "centers must be"),
    ("csq_grads", lambda t: (t["u"], t["labels"], t["centers"], t["tie"][1:], BITS, 1e-4), ValueError, "tie must be"),
    ("csq_grads", lambda t: (t["u"], t["labels"], t["centers"], t["tie"], [8, 16], 1e-4), ValueError, "bits"),
    # --- nhl_objective(u, grads?, losses, x?, relax_deriv?, bits, beta, distill, faithful, closed_form)
    ("nhl_objective", lambda t: _objective(t, u=t["u"].half()), TypeError, "u must be float32 or float64"),
    ("nhl_objective", lambda t: _objective(t, grads=t["grads"].float()), TypeError, "grads must have u's dtype"),
    ("nhl_objective", lambda t: _objective(t, x=t["x"].float()), TypeError, "x must have u's dtype"),
    ("nhl_objective", lambda t: _objective(t, deriv=t["u"].float()), TypeError, "relax_deriv must have u's dtype"),
    ("nhl_objective", lambda t: _objective(t, grads=t["grads"][:, 1:]), ValueError, "grads must have shape"),
    ("nhl_objective", lambda t: _objective(t, losses=t["losses"][1:]), ValueError, "losses must be"),
    ("nhl_objective", lambda t: _objective(t, x=t["x"][1:]), ValueError, "x must be"),
    ("nhl_objective", lambda t: _objective(t, deriv=t["u"][:, 1:]), ValueError, "relax_deriv must have shape"),
    ("nhl_objective", lambda t: _objective(t, grads=None), ValueError, "closed_form needs grads"),
    ("nhl_objective", lambda t: _objective(t, beta=0.0), ValueError, "beta"),
    ("nhl_objective", lambda t: _objective(t, distill=-1.0), ValueError, "distill"),
    ("nhl_objective", lambda t: _objective(t, bits=[4, 8, 13, 29]), ValueError, "bits"),
]


def _snce(t, u="u", v="u", z="x", za="x", bits=BITS, m=2, tau=0.1, sort_tau=(8.0, 16.0, 32.0), grad=None):
    """sorted_nce's arguments (sorted_nce_backward's with grad: a (K,) tensor, or a key of t)."""
    pick = lambda w: t[w] if isinstance(w, str) else w  # noqa: E731
    args = (pick(u), pick(v), pick(z), pick(za), bits, m, tau, list(sort_tau), True)
    return args if grad is None else (pick(grad),) + args


CASES += [
    # --- sorted_nce(u, v, z, z_anchor, bits, m, tau, sort_tau, hard) and its backward (grad first)
    ("sorted_nce", lambda t: _snce(t, u=t["u"].float()), TypeError, "v must have u's dtype"),
    ("sorted_nce", lambda t: _snce(t, z=t["x"].float(), za=t["x"].float()), TypeError, "z must have u's dtype"),
    ("sorted_nce", lambda t: _snce(t, za=t["x"].float()), TypeError, "z_anchor must have u's dtype"),
    ("sorted_nce", lambda t: _snce(t, u=t["u"].long(), v=t["u"].long()), TypeError, "u must be float32 or float64"),
    ("sorted_nce", lambda t: _snce(t, v=t["u"][:, 1:]), ValueError, r"v must be \(N, b_max\) with b_max = 32"),
    ("sorted_nce", lambda t: _snce(t, z=t["x"][1:], za=t["x"][1:]), ValueError, "z must be"),
    ("sorted_nce", lambda t: _snce(t, za=t["x"][:, 1:]), ValueError, r"z_anchor must be \(B, d\)"),
    ("sorted_nce", lambda t: _snce(t, za=t["x"][1:]), ValueError, r"z_anchor must be \(B, d\)"),
    ("sorted_nce", lambda t: _snce(t, v=t["u"][1:]), ValueError, r"z must be \(N, d\) with N = "),
    ("sorted_nce", lambda t: _snce(t, bits=[8, 16]), ValueError, "bits=.* must end at u's width"),
    ("sorted_nce", lambda t: _snce(t, m=6), ValueError, r"m=6 positives must be in \[1, N - 1\]"),
    ("sorted_nce", lambda t: _snce(t, m=0), ValueError, "m=0"),
    ("sorted_nce", lambda t: _snce(t, tau=0.0), ValueError, "tau=0"),
    ("sorted_nce", lambda t: _snce(t, sort_tau=(1.0, 1.0)), ValueError, "sort_tau must have one value per length"),
    ("sorted_nce", lambda t: _snce(t, sort_tau=(1.0, -1.0, 1.0)), ValueError, "sort_tau=.* must be finite"),
    ("sorted_nce", lambda t: _snce(t, v=t["u"][:1], z=t["x"][:1], m=1), ValueError, "N >= 2 candidates"),
    ("sorted_nce_backward", lambda t: _snce(t, grad=t["losses"].float()), TypeError, "grad must have u's dtype"),
    ("sorted_nce_backward", lambda t: _snce(t, grad=t["losses"][1:]), ValueError, "grad must have shape"),
    ("sorted_nce_backward", lambda t: _snce(t, grad="losses", m=6), ValueError, "m=6"),
]


def _ids():
    seen = {}
    for op, _, exc, _ in CASES:
        key = f"{op}-{exc.__name__}"
        seen[key] = seen.get(key, 0) + 1
        yield f"{key}{seen[key]}"


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("op, make, exc, match", CASES, ids=list(_ids()))
def test_bad_input_raises_value_or_type_error(op, make, exc, match):
    with pytest.raises(exc, match=match):
        getattr(torch.ops.nhl_fast, op)(*make(_inputs()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in nhl_fast.build_info()["backends"],
                    reason="needs a CUDA GPU and the CUDA extension")
@pytest.mark.parametrize("op, make, exc, match", [c for c in CASES if c[0] in CUDA_OPS],
                         ids=[i for c, i in zip(CASES, _ids()) if c[0] in CUDA_OPS])
def test_cuda_glue_raises_the_same_errors(op, make, exc, match):
    """The same cases on the GPU: the CUDA glue runs the same checks (csrc/checks.h)."""
    with pytest.raises(exc, match=match):
        getattr(torch.ops.nhl_fast, op)(*_to(make(_inputs()), "cuda"))


def test_every_registered_op_has_type_and_value_error_cases():
    ops = re.findall(r'm\.def\("(\w+)\(', OPS_CPP.read_text())
    assert ops, f"no op schemas found in {OPS_CPP}"
    for op in ops:
        kinds = {exc for o, _, exc, _ in CASES if o == op}
        assert kinds == {TypeError, ValueError}, f"{op}: bad-input cases raise {kinds}, want TypeError and ValueError"
    assert {o for o, *_ in CASES} <= set(ops), "cases for an op that is not registered"
    assert CUDA_OPS <= set(ops)


def test_valid_calls_still_work():
    """The checks admit what the ops accept (one valid call per op with the same inputs)."""
    t = _inputs()
    ops = torch.ops.nhl_fast
    ops.pack(t["xp"])
    ops.unpack(t["db"], 128)
    ops.hamming(t["q"], t["db"], BITS)
    ops.topk(t["q"], t["db"], 10, BITS)
    ops.nested_projection(t["xp"], t["w"], t["b"], "tanh")
    ops.project_and_pack(t["xp"], t["w"], t["b"])
    tot, rel = ops.distance_histogram(t["q"], t["db"], t["ql"], t["dl"], BITS)
    ops.index_ap(t["q"], t["db"], t["ql"][:, None], t["dl"][:, None], BITS, 10)
    ops.tie_ap(tot, rel, 5)
    ops.cascade_distill(t["u"], BITS)
    ops.csq_grads(t["u"], t["labels"], t["centers"], t["tie"], BITS, 1e-4)
    ops.nhl_objective(*_objective(t, deriv=t["u"]))
