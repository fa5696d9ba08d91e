// Per-row online softmax statistics, shared by the CUDA epilogue kernels and the host test.
//
// Plain math on floats, compiled as __host__ __device__ under nvcc and as ordinary C++
// elsewhere (csrc/tests/host_math_test.cpp checks it against float64 math on the CPU).
//
// A row's logits z_v (already (raw + bias) / temperature) are visited in any order and
// split across threads/tiles. Each state summarizes a subset S of the columns relative to
// its running max m (m = -inf and s = 0 for the empty set):
//
//   Softmax:        s = sum_{v in S} exp(z_v - m)                      lse = m + log s
//   SoftmaxMoment:  s as above, a = sum_{v in S} exp(z_v - m) (z_v - m)
//                   -> entropy H = -sum p log p = log s - a / s
//   KLState:        student and teacher Softmax plus one cross term x:
//                   forward KL(p_t||p_s):  x = sum exp(zt - m_t) (zt - zs)
//                                          KL = x / s_t - lse_t + lse_s
//                   reverse KL(p_s||p_t):  x = sum exp(zs - m_s) (zs - zt)
//                                          KL = x / s_s - lse_s + lse_t
//
// Rescaling a state from max m to m' >= m multiplies s and x by c = exp(m - m'); the
// moment becomes a' = c (a + (m - m') s). Empty states are handled explicitly so that
// -inf - (-inf) never reaches exp. A logit of -inf (e.g. a -inf bias entry) carries
// probability 0 and is skipped.
#pragma once

#include <math.h>

#include "launchers.h"

#ifdef __CUDACC__
#define TCOD_HD __host__ __device__ __forceinline__
#else
#define TCOD_HD inline
#endif

namespace tcod {

struct Softmax {
  float m;
  float s;
};

struct SoftmaxMoment {
  float m;
  float s;
  float a;
};

struct KLState {
  Softmax st;  // student
  Softmax te;  // teacher
  float x;     // cross term, scaled like the teacher (forward) or the student (reverse)
};

TCOD_HD float neg_inf() { return -INFINITY; }

TCOD_HD Softmax softmax_empty() { return Softmax{neg_inf(), 0.f}; }
TCOD_HD SoftmaxMoment moment_empty() { return SoftmaxMoment{neg_inf(), 0.f, 0.f}; }
TCOD_HD KLState kl_empty() { return KLState{softmax_empty(), softmax_empty(), 0.f}; }

// Adds one logit; returns the factor the previous s (and any tied term) was scaled by.
TCOD_HD float softmax_push(Softmax& st, float z, float* weight_of_z) {
  if (z == neg_inf()) {
    *weight_of_z = 0.f;
    return 1.f;
  }
  if (z > st.m) {
    const float c = st.s > 0.f ? expf(st.m - z) : 0.f;
    st.s = st.s * c + 1.f;
    st.m = z;
    *weight_of_z = 1.f;
    return c;
  }
  const float e = expf(z - st.m);
  st.s += e;
  *weight_of_z = e;
  return 1.f;
}

TCOD_HD void moment_push(SoftmaxMoment& st, float z) {
  if (z == neg_inf()) return;
  if (z > st.m) {
    if (st.s > 0.f) {
      const float c = expf(st.m - z);
      st.a = c * (st.a + (st.m - z) * st.s);
      st.s *= c;
    }
    st.s += 1.f;  // the new maximum contributes exp(0) = 1 and (z - m) = 0
    st.m = z;
    return;
  }
  const float d = z - st.m;
  const float e = expf(d);
  st.s += e;
  st.a += e * d;
}

// Adds one column (student logit zs, teacher logit zt) for divergence `div`.
TCOD_HD void kl_push(KLState& st, float zs, float zt, int div) {
  float ws, wt;
  const float cs = softmax_push(st.st, zs, &ws);
  const float ct = softmax_push(st.te, zt, &wt);
  if (div == kForwardKL) {
    st.x *= ct;
    if (wt > 0.f) st.x += wt * (zt - zs);
  } else if (div == kReverseKL) {
    st.x *= cs;
    if (ws > 0.f) st.x += ws * (zs - zt);
  }
}

// Scale factors (ca, cb) that bring two Softmax states to their common max m.
struct MergeScales {
  float m;
  float ca;
  float cb;
};

TCOD_HD MergeScales merge_scales(const Softmax& a, const Softmax& b) {
  if (b.s == 0.f) return MergeScales{a.m, 1.f, 0.f};
  if (a.s == 0.f) return MergeScales{b.m, 0.f, 1.f};
  const float m = fmaxf(a.m, b.m);
  return MergeScales{m, expf(a.m - m), expf(b.m - m)};
}

TCOD_HD Softmax softmax_merge(const Softmax& a, const Softmax& b) {
  const MergeScales k = merge_scales(a, b);
  return Softmax{k.m, a.s * k.ca + b.s * k.cb};
}

TCOD_HD SoftmaxMoment moment_merge(const SoftmaxMoment& a, const SoftmaxMoment& b) {
  if (b.s == 0.f) return a;
  if (a.s == 0.f) return b;
  const float m = fmaxf(a.m, b.m);
  const float ca = expf(a.m - m), cb = expf(b.m - m);
  return SoftmaxMoment{m, a.s * ca + b.s * cb, ca * (a.a + (a.m - m) * a.s) + cb * (b.a + (b.m - m) * b.s)};
}

TCOD_HD KLState kl_merge(const KLState& a, const KLState& b, int div) {
  const MergeScales ks = merge_scales(a.st, b.st);
  const MergeScales kt = merge_scales(a.te, b.te);
  KLState out;
  out.st = Softmax{ks.m, a.st.s * ks.ca + b.st.s * ks.cb};
  out.te = Softmax{kt.m, a.te.s * kt.ca + b.te.s * kt.cb};
  if (div == kForwardKL) {
    out.x = a.x * kt.ca + b.x * kt.cb;
  } else if (div == kReverseKL) {
    out.x = a.x * ks.ca + b.x * ks.cb;
  } else {
    out.x = 0.f;
  }
  return out;
}

TCOD_HD float softmax_lse(const Softmax& st) { return st.m + logf(st.s); }

TCOD_HD float moment_entropy(const SoftmaxMoment& st) { return logf(st.s) - st.a / st.s; }

// KL of a finished row for the forward/reverse divergences (0 for jsd, which needs a
// second pass once both log-normalizers are known).
TCOD_HD float kl_value(const KLState& st, int div) {
  const float lse_s = softmax_lse(st.st), lse_t = softmax_lse(st.te);
  if (div == kForwardKL) return st.x / st.te.s - lse_t + lse_s;
  if (div == kReverseKL) return st.x / st.st.s - lse_s + lse_t;
  return 0.f;
}

// log(exp(a) + exp(b)) without overflow; -inf when both are -inf.
TCOD_HD float logaddexp(float a, float b) {
  const float m = fmaxf(a, b);
  if (m == neg_inf()) return m;
  return m + log1pf(expf(-fabsf(a - b)));
}

// JSD per column once lse_s, lse_t are known, with M = beta p_t + (1 - beta) p_s:
//   term    = beta p_t (log p_t - log M) + (1 - beta) p_s (log p_s - log M)
//   ksm     = p_s (log p_s - log M)          (summed: KL(p_s || M), used by the gradient)
// Zero-probability entries contribute 0 (the p log p -> 0 limit).
struct JSDTerms {
  float loss;
  float ksm;
};

TCOD_HD float jsd_log_mixture(float lps, float lpt, float log_beta, float log_1m_beta) {
  return logaddexp(log_beta + lpt, log_1m_beta + lps);
}

TCOD_HD JSDTerms jsd_terms(float lps, float lpt, float beta, float log_beta, float log_1m_beta) {
  const float log_m = jsd_log_mixture(lps, lpt, log_beta, log_1m_beta);
  const float ps = expf(lps), pt = expf(lpt);
  const float ts = ps > 0.f ? ps * (lps - log_m) : 0.f;
  const float tt = pt > 0.f ? pt * (lpt - log_m) : 0.f;
  return JSDTerms{beta * tt + (1.f - beta) * ts, ts};
}

// dL/dz_s for one column (before the 1/T and per-row grad-output factors).
//   forward: p_s - p_t
//   reverse: p_s (log p_s - log p_t - KL)                         c = KL(p_s || p_t)
//   jsd:     (1 - beta) p_s (log p_s - log M - KL(p_s || M))      c = KL(p_s || M)
TCOD_HD float kl_grad(float lps, float lpt, float c, int div, float beta, float log_beta, float log_1m_beta) {
  const float ps = expf(lps);
  if (div == kForwardKL) return ps - expf(lpt);
  if (ps == 0.f) return 0.f;
  if (div == kReverseKL) return ps * (lps - lpt - c);
  const float log_m = jsd_log_mixture(lps, lpt, log_beta, log_1m_beta);
  return (1.f - beta) * ps * (lps - log_m - c);
}

// d/dz of g_logp * log p_target + g_ent * H for one column:
//   g_logp (onehot - p) - g_ent p (log p + H)
TCOD_HD float logprob_grad(float lp, bool is_target, float entropy, float g_logp, float g_ent) {
  const float p = expf(lp);
  float d = g_logp * ((is_target ? 1.f : 0.f) - p);
  if (g_ent != 0.f && p > 0.f) d -= g_ent * p * (lp + entropy);
  return d;
}

}  // namespace tcod
