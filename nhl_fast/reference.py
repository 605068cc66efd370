"""The spec: pure-PyTorch reference implementations of every nhl_fast op.

Short and obviously correct rather than fast; every kernel (C++, CUDA, Triton) is
tested against these functions. Inputs are assumed validated (see nhl_fast._checks).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch

WORD = 64


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(N, b) real or bool -> (N, ceil(b/64)) int64; bit j of word j//64 at j%64 set where code > 0."""
    n, b = codes.shape
    words = (b + WORD - 1) // WORD
    on = (codes > 0) if codes.dtype != torch.bool else codes
    on = torch.nn.functional.pad(on.to(torch.int64), (0, words * WORD - b)).view(n, words, WORD)
    # 1 << 63 wraps to INT64_MIN, so the sum of distinct powers of two is exactly the bitwise OR.
    weights = torch.ones(WORD, dtype=torch.int64, device=codes.device) << torch.arange(WORD, device=codes.device)
    return (on * weights).sum(-1)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, W) int64 -> (N, bits) float32 of +-1 (+1 where the bit is set)."""
    j = torch.arange(bits, device=packed.device)
    on = (packed[:, j // WORD] >> (j % WORD)) & 1
    return on.to(torch.float32) * 2 - 1


def hamming(q: torch.Tensor, db: torch.Tensor, bits: Sequence[int]) -> torch.Tensor:
    """(L, Q, N) int32 Hamming distances between the first bits[l] bits of q and db."""
    b_max = max(bits)
    sq, sdb = unpack(q, b_max).double(), unpack(db, b_max).double()
    # For +-1 vectors of length b: d = (b - <x, y>) / 2.
    out = [((b - sq[:, :b] @ sdb[:, :b].T) / 2).round().to(torch.int32) for b in bits]
    return torch.stack(out)


def topk(q: torch.Tensor, db: torch.Tensor, k: int, bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q, k) smallest distances and their database indices; ties by lower index."""
    dist = hamming(q, db, bits)
    # A stable sort keeps equal distances in database order: the tie rule of every backend.
    sorted_dist, idx = torch.sort(dist, dim=-1, stable=True)
    return sorted_dist[..., :k].contiguous(), idx[..., :k].contiguous()


# --- layer: nested projection (all code lengths from one GEMM) and fused encode ---

RELAXES = ("none", "tanh", "sign_ste")


class _SignSTE(torch.autograd.Function):
    """sign forward (z > 0 -> +1, else -1), clipped identity backward (gradient where |z| <= 1)."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return relax_grad(grad, "sign_ste", None, z)


def relax(z: torch.Tensor, name: str) -> torch.Tensor:
    """The relaxation applied to the pre-activation z: none (identity), tanh, sign_ste."""
    if name == "tanh":
        return torch.tanh(z)
    if name == "sign_ste":
        return _SignSTE.apply(z)
    return z


def relax_grad(grad_u: torch.Tensor, name: str, u, z) -> torch.Tensor:
    """d loss / d z from d loss / d u: tanh needs u (1 - u^2), sign_ste needs z (|z| <= 1)."""
    if name == "tanh":
        return grad_u * (1 - u * u)
    if name == "sign_ste":
        return grad_u * (z.abs() <= 1).to(grad_u.dtype)
    return grad_u


def nested_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relax_name: str):
    """(u, z): z = x W^T + b (B, b_max), u = relax(z). The code of length b_k is u[:, :b_k]."""
    z = torch.addmm(bias, x, weight.T)
    return relax(z, relax_name), z


def project_and_pack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, ceil(b_max/64)) int64: bit j set where (x W^T + b)[:, j] > 0 (0 packs as 0).

    Streams 65536 rows at a time, so even the spec never holds (N, b_max) float codes.
    """
    chunk = 65536
    if x.shape[0] <= chunk:
        return pack(torch.addmm(bias, x, weight.T))
    return torch.cat([pack(torch.addmm(bias, x[i:i + chunk], weight.T)) for i in range(0, x.shape[0], chunk)])

# --- metrics: relevance histograms and index-ordered AP (the spec of csrc/*/distance_histogram_*, index_ap_*) ---
# Labels reach the ops normalised by nhl_fast.metrics: class indices (N,) int64, or multi-hot
# labels packed to bitmasks (N, ceil(C/64)) int64 (same packing as codes). Queries are taken in
# chunks so no (L, Q, N) tensor is ever larger than _CHUNK elements.
_CHUNK = 1 << 22


def relevance(q_labels: torch.Tensor, db_labels: torch.Tensor) -> torch.Tensor:
    """(Q, N) bool: equal class indices, or bitmasks that share a set bit."""
    if q_labels.dim() == 1:
        return q_labels[:, None] == db_labels[None, :]
    return ((q_labels[:, None, :] & db_labels[None, :, :]) != 0).any(-1)


def _query_chunks(q: torch.Tensor, n: int, lengths: int):
    step = max(1, _CHUNK // max(1, n * lengths))
    return range(0, q.shape[0], step), step


def distance_histogram(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                       bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q, max(bits)+1) int64 counts of all / relevant database items at each Hamming distance."""
    nb = max(bits) + 1
    tot = torch.zeros(len(bits), q.shape[0], nb, dtype=torch.int64, device=q.device)
    rel = torch.zeros_like(tot)
    starts, step = _query_chunks(q, db.shape[0], len(bits))
    for s in starts:
        dist = hamming(q[s:s + step], db, bits).long()  # (L, c, N)
        r = relevance(q_labels[s:s + step], db_labels).long().expand_as(dist)
        tot[:, s:s + step].scatter_add_(2, dist, torch.ones_like(dist))
        rel[:, s:s + step].scatter_add_(2, dist, r)
    return tot, rel


def index_ap(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
             bits: Sequence[int], topk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query AP (L, Q) float64 and hits (L, Q) int64 with ties broken by database index.

    Rank the database by (distance, index) (a stable sort), keep the first `topk` (all when None);
    AP = mean over the relevant items kept of (relevant so far / rank); 0 when none is kept.
    hits = the number of relevant items kept.
    """
    n = db.shape[0]
    k = n if topk is None else topk
    ap = torch.zeros(len(bits), q.shape[0], dtype=torch.float64, device=q.device)
    hits = torch.zeros(len(bits), q.shape[0], dtype=torch.int64, device=q.device)
    starts, step = _query_chunks(q, n, len(bits))
    for s in starts:
        dist = hamming(q[s:s + step], db, bits)
        order = torch.sort(dist, dim=-1, stable=True).indices[..., :k]
        r = relevance(q_labels[s:s + step], db_labels).expand(len(bits), -1, -1)
        r = torch.gather(r, 2, order).double()
        rank = torch.arange(1, k + 1, dtype=torch.float64, device=q.device)
        found = r.sum(-1)
        prec_sum = (torch.cumsum(r, -1) / rank * r).sum(-1)
        ap[:, s:s + step] = torch.where(found > 0, prec_sum / found.clamp(min=1), 0.0)
        hits[:, s:s + step] = found.long()
    return ap, hits


# tie-aware AP: closed forms on the histograms (the spec of csrc/cpu/tie_ap_cpu.cpp, kernels/tie_ap.h)


def _bin_sums(n_below: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S1 = sum_{i=1..n} 1/(N+i) and S2 = sum_{i=1..n} (i-1)/(N+i) for N = n_below (float64)."""
    s1 = torch.special.digamma(n_below + n + 1) - torch.special.digamma(n_below + 1)
    return s1, n - (n_below + 1) * s1


def _expected_bin_precision(n_below, r_below, n, r):
    """E[sum of the precisions of the relevant items of a bin] over random orders inside it.

    Position i of the bin is relevant with probability r/n; given that, the bin holds on average
    1 + (i-1)(r-1)/(n-1) relevant items up to i, so precision = (R_<d + that) / (N_<d + i).
    """
    s1, s2 = _bin_sums(n_below, n)
    frac = torch.where(n > 1, (r - 1) / (n - 1).clamp(min=1), torch.zeros_like(n))
    return torch.where(n > 0, r / n.clamp(min=1) * ((r_below + 1) * s1 + frac * s2), torch.zeros_like(n))


def _log_choose(a, b):
    return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)


def tie_ap(tot: torch.Tensor, rel: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """Tie-aware AP (L, Q) float64 from histograms: the exact expectation over uniformly random
    orders of the items inside every distance bin (McFee & Lanckriet 2010; He et al. CVPR 2018).

    topk: AP@k normalised by the relevant items within the top k (0 if none). The bin d* that
    straddles position k gives m = k - N_<d* of its n items; the relevant count X among them is
    hypergeometric(n, r, m) and, given X = x, its relevant items are uniform over the m slots, so
    E[AP@k] = sum_x P(X = x) (S_full + T(x)) / (R_<d* + x), S_full the expected precision sum of
    the bins before d* (independent of X), T(x) that of the straddling part.
    """
    tot, rel = tot.double(), rel.double()
    n_le, r_le = tot.cumsum(-1), rel.cumsum(-1)
    n_below, r_below = n_le - tot, r_le - rel
    per_bin = _expected_bin_precision(n_below, r_below, tot, rel)
    if topk is None:
        r_all = r_le[..., -1]
        return torch.where(r_all > 0, per_bin.sum(-1) / r_all.clamp(min=1), torch.zeros_like(r_all))
    # d*: the first bin whose cumulative count reaches k (exists: k <= N).
    dstar = (n_le < topk).sum(-1, keepdim=True)
    s_full = torch.where(torch.arange(tot.shape[-1], device=tot.device) < dstar, per_bin, 0.0).sum(-1)
    take = lambda t: t.gather(-1, dstar).squeeze(-1)  # noqa: E731
    n, r, nb, rb = take(tot), take(rel), take(n_below), take(r_below)
    m = topk - nb
    s1, s2 = _bin_sums(nb, m)
    flat = [t.reshape(-1) for t in (n, r, nb, rb, m, s1, s2, s_full)]
    n, r, nb, rb, m, s1, s2, s_full = flat

    def value(x, rows=slice(None)):  # (S_full + E[T | X = x]) / (R_<d* + x), 0 when nothing relevant is kept
        m_, rb_ = m[rows, None], rb[rows, None]
        frac = torch.where(m_ > 1, (x - 1) / (m_ - 1).clamp(min=1), 0.0)
        t = x / m_ * ((rb_ + 1) * s1[rows, None] + frac * s2[rows, None])
        denom = rb_ + x
        return torch.where(denom > 0, (s_full[rows, None] + t) / denom.clamp(min=1), 0.0)

    # X is a constant when the cut takes the whole bin, the bin is all relevant or none of it is.
    fixed = torch.where(m == n, r, torch.where(r == n, m, torch.zeros_like(r)))
    out = value(fixed[:, None])[:, 0]
    random = ((r > 0) & (r < n) & (m < n)).nonzero().squeeze(1)
    if random.numel():
        lo = (m[random] - (n[random] - r[random])).clamp(min=0)
        width = torch.minimum(r[random], m[random]) - lo + 1
        js = torch.arange(int(width.max().item()), dtype=torch.float64, device=tot.device)
        step = max(1, _CHUNK // js.numel())
        for s in range(0, random.numel(), step):
            rows = random[s:s + step]
            n_, r_, m_ = n[rows, None], r[rows, None], m[rows, None]
            x0 = lo[s:s + step, None]
            ok = js < width[s:s + step, None]
            x = torch.where(ok, x0 + js, x0)
            # log P(X = lo) from log-gammas, then P(x + 1) / P(x) = (r - x)(m - x) / ((x + 1)(n - r - m + x + 1))
            # accumulated along x: one log per term instead of four log-gammas.
            log_p0 = _log_choose(r_, x0) + _log_choose(n_ - r_, m_ - x0) - _log_choose(n_, m_)
            step_up = torch.log((r_ - x) * (m_ - x)) - torch.log((x + 1) * (n_ - r_ - m_ + x + 1))
            step_up = torch.where(ok, step_up, 0.0)[:, :-1]  # the last x has no successor (log 0 there)
            log_p = log_p0 + torch.nn.functional.pad(torch.cumsum(step_up, -1), (1, 0))
            p = torch.where(ok, torch.exp(log_p), 0.0)
            out[rows] = (p * value(x, rows)).sum(-1)
    return out.view(dstar.shape[:-1])


# --- objective: cascade distillation (op cascade_distill) ---


def cascade_distill(u: torch.Tensor, bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """((K-1,) D_k, (B, sum b_k) packed dD_k/du): the long-short cascade distillation of every pair
    (student k, detached teacher k+1) and its closed-form gradient, length k's segment holding
    dD_k/du[:, :b_k] (the longest length's segment is 0).

    S_k = u[:, :b_k] u[:, :b_k]^T, N_k = S_k / r_k row-wise (r_k = max(row norm, 1e-12), F.normalize),
    D_k = ||N_k - N_{k+1}||_F^2 / B^2; with E = 2 (N_k - N_{k+1}) / B^2,
    A = (E - N_k rowsum(E * N_k)) / r_k (E / r_k where r_k was clamped), dD_k/du[:, :b_k] = (A + A^T) u[:, :b_k].
    """
    eps = 1e-12
    batch = u.shape[0]
    grams = torch.stack([u[:, :b] @ u[:, :b].T for b in bits])
    norms = torch.linalg.vector_norm(grams, dim=2, keepdim=True).clamp_min(eps)
    normed = grams / norms
    student, teacher, r = normed[:-1], normed[1:], norms[:-1]
    diff = student - teacher
    dist = (diff * diff).sum((1, 2)) / (batch * batch)
    e = 2 * diff / (batch * batch)
    a = torch.where(r > eps, e - student * (e * student).sum(2, keepdim=True), e) / r
    sym = a + a.transpose(1, 2)
    parts = [sym[k] @ u[:, :b] for k, b in enumerate(bits[:-1])]
    return dist, torch.cat(parts + [u.new_zeros(batch, bits[-1])], dim=1)


# --- objective: the whole forward (op nhl_objective) ---


def dominance_weights(dots: torch.Tensor, beta: float, faithful: bool = False):
    """(weights (K,), conflicts (K, K) bool) from the gradient dots d[i, j] = <g_i[:b_i], g_j[:b_i]>:
    tau_i = beta n_i^2 / (K-1) (faithful: n_i = n_1), a_ij = tau_i / -d_ij where d_ij < -tau_i else 1,
    a_ij <- min(a_ij, a_i,i+1), w_j = prod_{i<j} a_ij, w <- K w / sum(w)."""
    k = dots.shape[0]
    norm2 = dots[0, 0].expand(k) if faithful else dots.diagonal()
    tau = beta * norm2 / (k - 1)
    upper = torch.ones(k, k, dtype=torch.bool, device=dots.device).triu(1)
    conflicts = upper & (dots < -tau[:, None])
    alpha = torch.where(conflicts, tau[:, None] / -dots, 1.0)
    anchor = torch.nn.functional.pad(alpha.diagonal(1), (0, 1), value=1.0)  # a_{i,i+1}; the last row has none
    alpha = torch.where(upper, torch.minimum(alpha, anchor[:, None]), 1.0)
    w = alpha.prod(0)  # a_ij = 1 for i >= j, so w_0 = 1
    return k * w / w.sum(), conflicts


def nhl_objective(u: torch.Tensor, grads, losses: torch.Tensor, x, relax_deriv, bits: Sequence[int],
                  beta: float, distill: float, faithful: bool, closed_form: bool, *, weight_rule=None):
    """(total, grad_u (B, b_max), weights (K,), conflicts (K, K) bool, dots (K, K), dist (K-1,)).

    u (B, b_max) the codes (no graph); grads (B, sum b_k) or None: the base losses' dL_k/du[:, :b_k] side by
    side; losses (K,) their values; x (B, in) the head's input, or None for no adaptive weights; relax_deriv
    (B, b_max) du/dz, or None for the identity. O_k = L_k + distill D_k (D_K = 0, dist = cascade_distill),
    g_k = (dO_k/du[:, :b_k] * du/dz)^T x, dots d_ij = <g_i[:b_i], g_j[:b_i]>, weights = dominance_weights
    (all 1 without x or grads). final = weights, with the longest length's dropped in faithful mode with
    distillation (the reference's zip). total = sum_k final_k (L_k if closed_form) + final_k distill D_k;
    grad_u = d total / du with the weights held constant (dL_k/du taken from grads).
    weight_rule: None (dominance_weights, the op), or a callable dots -> (weights, conflicts)
    (nhl_fast.weight_rules; Python only, not part of the op's schema).
    """
    k = len(bits)
    batch, b_max = u.shape
    col = torch.cat([torch.arange(b, device=u.device) for b in bits])  # u's column of each packed column
    length = torch.cat([torch.full((b,), i, device=u.device) for i, b in enumerate(bits)])  # its length
    use_distill = distill > 0 and k > 1
    dist, grad_d = cascade_distill(u, bits) if use_distill else (u.new_zeros(k - 1), None)
    G = grads
    if use_distill:
        G = distill * grad_d if G is None else G + distill * grad_d
    weights = u.new_ones(k)
    conflicts = torch.zeros(k, k, dtype=torch.bool, device=u.device)
    dots = u.new_zeros(k, k)
    adaptive = x is not None and k > 1 and G is not None
    if adaptive:
        gz = G if relax_deriv is None else G * relax_deriv[:, col]
        g = u.new_zeros(k, b_max, x.shape[1])  # every length's weight gradient, rows past b_k zero
        for i, (lo, b) in enumerate(zip((0,) + tuple(itertools.accumulate(bits)), bits)):
            g[i, :b] = gz[:, lo:lo + b].T @ x
        dots = g.reshape(k, -1) @ g.reshape(k, -1).T
        weights, conflicts = dominance_weights(dots, beta, faithful) if weight_rule is None else weight_rule(dots)
    final = weights.clone()
    if faithful and adaptive and use_distill:
        final[-1] = 0
    coef = final[length]  # per packed column
    total = (final * losses.to(u.dtype)).sum() if closed_form else u.new_zeros(())
    total = total + distill * (final[:-1] * dist).sum()
    packed = u.new_zeros(batch, col.numel())
    if closed_form:
        packed = packed + coef * grads
    if use_distill:
        packed = packed + coef * distill * grad_d
    grad_u = u.new_zeros(batch, b_max).index_add_(1, col, packed)
    return total, grad_u, weights, conflicts, dots, dist


# --- losses: CSQ in closed form (op csq_grads) ---


def csq_grads(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor,
              bits: Sequence[int], lambda_: float):
    """((K,) L_k, (B, sum b_k) packed dL_k/du[:, :b_k]) of CSQ, no graph.

    labels (B, C) multi-hot; centers (C, sum b_k) a +-1 centre per length side by side, or (C, b_max) nested
    centres (length k reads the prefix); tie (T,) the sign of a bit whose label-summed centre is 0. The target
    t = sign(labels @ centers) (tie where 0); e = BCE-with-logits(2x, (t+1)/2) + lambda_ (|tanh x| - 1)^2
    averaged over the batch and the b_k bits; de/dx = 2 (sigmoid(2x) - (t+1)/2) + 2 lambda_ (|tanh x| - 1)
    sign(x) (1 - tanh^2 x).
    """
    s = labels @ centers
    targets = torch.where(s == 0, tie, s.sign())
    shared = centers.shape[1] != sum(bits)
    losses, parts, lo = [], [], 0
    for b in bits:
        x = u[:, :b]
        t = ((targets[:, :b] if shared else targets[:, lo:lo + b]) + 1) / 2
        th = x.tanh()
        dev = th.abs() - 1
        e = torch.nn.functional.binary_cross_entropy_with_logits(2 * x, t, reduction="none") + lambda_ * dev * dev
        dx = 2 * (torch.sigmoid(2 * x) - t) + 2 * lambda_ * dev * th.sign() * (1 - th * th)
        losses.append(e.mean())
        parts.append(dx / e.numel())
        lo += b
    return torch.stack(losses), torch.cat(parts, 1)


# --- unsupervised: soft sort + SortedNCE (ops sorted_nce, sorted_nce_backward) ---


def sorted_nce(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, z_anchor: torch.Tensor, bits: Sequence[int],
               m: int, tau: float, sort_tau: Sequence[float], hard: bool) -> torch.Tensor:
    """(K,) SortedNCE of every code length, with the (B, N, N) soft permutations and the (B, N, d) sorted
    latents materialised (the form the fused kernels are tested against; NSH, Yu et al. IJCAI 2022).

    B >= 1 anchors: codes u (B, b_max), latents z_anchor (B, d); N >= 2 candidates: codes v (N, b_max), latents
    z (N, d) (N = B in the plain loss; more with a code memory); m in [1, N - 1].
    Per length k (b = bits[k], tau_s = sort_tau[k]) and anchor i:
      D_ij = (b - <u_i, v_j>_b) / (2b)                  relaxed Hamming distance of the first b columns, in [0, 1]
      q = sort(D_i) ascending (stable), logits L_rj = -|q_r - D_ij| / tau_s, Pt_r = softmax_j(L_r)   (SoftSort)
      P = Pt (soft) or onehot(argmax_j L_rj, first index) + Pt - sg(Pt) (hard, straight-through)
      e_r = sum_j P_rj z_j,  c_r = <e_r, a_i> / (max(|e_r|, eps) max(|a_i|, eps)),  a = z_anchor, eps = 1e-8
      l_i = (1/m) sum_{r<m} -log( exp(c_r/tau) / (exp(c_r/tau) + sum_{r'>=m} exp(c_r'/tau)) )
    L_k = mean_i l_i: the m nearest ranks are the positives, every later rank a negative of each.
    """
    eps = 1e-8
    out = []
    for b, ts in zip(bits, sort_tau):
        dist = (b - u[:, :b] @ v[:, :b].T) / (2 * b)                      # (B, N)
        q = torch.sort(dist, dim=1, stable=True).values                    # (B, N) ascending
        logits = -(q.unsqueeze(2) - dist.unsqueeze(1)).abs() / ts          # (B, N_rank, N_cand)
        p = logits.softmax(-1)
        if hard:
            one = torch.zeros_like(p).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
            p = one + p - p.detach()
        e = torch.einsum("irj,jd->ird", p, z)                              # (B, N, d) sorted latents
        ne = torch.linalg.vector_norm(e, dim=2).clamp_min(eps)
        na = torch.linalg.vector_norm(z_anchor, dim=1).clamp_min(eps)
        c = torch.einsum("ird,id->ir", e, z_anchor) / (ne * na[:, None]) / tau
        neg = torch.logsumexp(c[:, m:], dim=1, keepdim=True)               # (B, 1)
        pos = c[:, :m]
        out.append((torch.logaddexp(pos, neg) - pos).mean())
    return torch.stack(out)


def sorted_nce_backward(grad: torch.Tensor, u: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                        z_anchor: torch.Tensor, bits: Sequence[int], m: int, tau: float, sort_tau: Sequence[float],
                        hard: bool):
    """(du, dv, dz, dz_anchor): the vector-Jacobian product of sorted_nce with grad (K,), by autograd."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (u, v, z, z_anchor)]
        loss = sorted_nce(*leaves, bits, m, tau, sort_tau, hard)
        return tuple(torch.autograd.grad(loss, leaves, grad))
