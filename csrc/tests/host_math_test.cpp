// Host test of csrc/online_softmax.cuh (the per-row math of the CUDA epilogues), built with
// the host C++ compiler by scripts/compile_csrc.sh; exits non-zero on the first mismatch.
//
// Checks, against float64 math on the same logits:
//  * online states pushed column by column in split runs and merged in shuffled order give
//    lse, entropy and forward/reverse KL (rows with -inf logits and large offsets included);
//  * the JSD terms and KL(p_s || M);
//  * kl_grad and logprob_grad equal central finite differences of the float64 losses.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../online_softmax.cuh"

namespace {

using Row = std::vector<float>;
int failures = 0;

void expect_close(const char* what, double got, double want, double rtol, double atol) {
  if (got == want) return;  // also covers equal infinities
  if (!(std::fabs(got - want) <= atol + rtol * std::fabs(want))) {
    std::printf("FAIL %s: got %.9g want %.9g\n", what, got, want);
    ++failures;
  }
}

std::vector<double> log_softmax64(const Row& z) {
  double m = -INFINITY;
  for (float v : z) m = std::max(m, static_cast<double>(v));
  double s = 0;
  for (float v : z) s += std::exp(v - m);
  std::vector<double> out(z.size());
  for (size_t i = 0; i < z.size(); ++i) out[i] = z[i] - (m + std::log(s));
  return out;
}

double kl64(const std::vector<double>& lp, const std::vector<double>& lq) {  // KL(p || q)
  double k = 0;
  for (size_t i = 0; i < lp.size(); ++i)
    if (std::isfinite(lp[i])) k += std::exp(lp[i]) * (lp[i] - lq[i]);
  return k;
}

double jsd64(const std::vector<double>& ls, const std::vector<double>& lt, double beta) {
  std::vector<double> lm(ls.size());
  for (size_t i = 0; i < ls.size(); ++i) lm[i] = std::log(beta * std::exp(lt[i]) + (1 - beta) * std::exp(ls[i]));
  return beta * kl64(lt, lm) + (1 - beta) * kl64(ls, lm);
}

double entropy64(const std::vector<double>& lp) {
  double h = 0;
  for (double v : lp)
    if (std::isfinite(v)) h -= std::exp(v) * v;
  return h;
}

Row random_row(std::mt19937& gen, int n, float offset, float scale, bool with_neg_inf) {
  std::normal_distribution<float> normal(0.f, scale);
  Row z(n);
  for (auto& v : z) v = offset + normal(gen);
  if (with_neg_inf) {
    for (int i = 0; i < n; i += 7) z[i] = -INFINITY;
  }
  return z;
}

// Pushes columns in `parts` contiguous runs, then merges the run states in shuffled order.
template <typename State, typename Push, typename Merge>
State online(int n, int parts, std::mt19937& gen, State empty, Push push, Merge merge) {
  std::vector<State> runs;
  for (int p = 0; p < parts; ++p) {
    State st = empty;
    for (int i = p * n / parts; i < (p + 1) * n / parts; ++i) push(st, i);
    runs.push_back(st);
  }
  runs.push_back(empty);  // merging an empty state must be a no-op
  std::shuffle(runs.begin(), runs.end(), gen);
  State acc = empty;
  for (const State& r : runs) acc = merge(acc, r);
  return acc;
}

void check_statistics(std::mt19937& gen) {
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 1 + static_cast<int>(gen() % 300);
    const int parts = 1 + static_cast<int>(gen() % 9);
    const float offset = trial % 4 == 0 ? 80.f : 0.f;
    const bool neg_inf = trial % 3 == 0 && n > 1;
    const Row zs = random_row(gen, n, offset, 3.f, neg_inf);
    const Row zt = random_row(gen, n, -offset, 2.f, neg_inf);
    const auto ls = log_softmax64(zs), lt = log_softmax64(zt);

    const tcod::SoftmaxMoment mom = online(
        n, parts, gen, tcod::moment_empty(), [&](tcod::SoftmaxMoment& st, int i) { tcod::moment_push(st, zs[i]); },
        [](const tcod::SoftmaxMoment& a, const tcod::SoftmaxMoment& b) { return tcod::moment_merge(a, b); });
    expect_close("lse", mom.m + std::log(mom.s), zs[0] == -INFINITY ? zs[1] - ls[1] : zs[0] - ls[0], 1e-6, 1e-4);
    expect_close("entropy", tcod::moment_entropy(mom), entropy64(ls), 1e-4, 1e-4);

    for (int div : {tcod::kForwardKL, tcod::kReverseKL}) {
      const tcod::KLState st = online(
          n, parts, gen, tcod::kl_empty(), [&](tcod::KLState& s, int i) { tcod::kl_push(s, zs[i], zt[i], div); },
          [div](const tcod::KLState& a, const tcod::KLState& b) { return tcod::kl_merge(a, b, div); });
      const double want = div == tcod::kForwardKL ? kl64(lt, ls) : kl64(ls, lt);
      expect_close(div == tcod::kForwardKL ? "forward KL" : "reverse KL", tcod::kl_value(st, div), want, 1e-4, 2e-4);
      const tcod::Softmax plain = online(
          n, parts, gen, tcod::softmax_empty(),
          [&](tcod::Softmax& s, int i) {
            float w;
            tcod::softmax_push(s, zt[i], &w);
          },
          [](const tcod::Softmax& a, const tcod::Softmax& b) { return tcod::softmax_merge(a, b); });
      expect_close("teacher lse", tcod::softmax_lse(st.te), tcod::softmax_lse(plain), 1e-6, 1e-4);
    }

    const double beta = 0.1 + 0.8 * (trial % 5) / 4.0;
    double loss = 0, ksm = 0;
    const float lb = std::log(static_cast<float>(beta)), l1b = std::log1p(-static_cast<float>(beta));
    for (int i = 0; i < n; ++i) {
      const tcod::JSDTerms t = tcod::jsd_terms(static_cast<float>(ls[i]), static_cast<float>(lt[i]),
                                               static_cast<float>(beta), lb, l1b);
      loss += t.loss;
      ksm += t.ksm;
    }
    expect_close("jsd", loss, jsd64(ls, lt, beta), 1e-4, 1e-5);
    std::vector<double> lm(n);
    for (int i = 0; i < n; ++i) lm[i] = std::log(beta * std::exp(lt[i]) + (1 - beta) * std::exp(ls[i]));
    expect_close("KL(p_s||M)", ksm, kl64(ls, lm), 1e-4, 1e-5);
  }
}

// Central differences of a float64 loss of the student logits.
template <typename Loss>
std::vector<double> numeric_grad(const Row& zs, Loss loss) {
  std::vector<double> g(zs.size());
  const double h = 1e-3;
  for (size_t i = 0; i < zs.size(); ++i) {
    Row up = zs, dn = zs;
    up[i] += static_cast<float>(h);
    dn[i] -= static_cast<float>(h);
    g[i] = (loss(up) - loss(dn)) / (static_cast<double>(up[i]) - dn[i]);
  }
  return g;
}

void check_gradients(std::mt19937& gen) {
  for (int trial = 0; trial < 12; ++trial) {
    const int n = 3 + static_cast<int>(gen() % 20);
    const Row zs = random_row(gen, n, 0.f, 1.5f, false);
    const Row zt = random_row(gen, n, 0.f, 1.5f, false);
    const auto ls = log_softmax64(zs), lt = log_softmax64(zt);
    const float beta = 0.3f;
    const float lb = std::log(beta), l1b = std::log1p(-beta);
    std::vector<double> lm(n);
    for (int i = 0; i < n; ++i) lm[i] = std::log(beta * std::exp(lt[i]) + (1 - beta) * std::exp(ls[i]));

    struct Case {
      int div;
      double c;
    } cases[] = {{tcod::kForwardKL, 0.0}, {tcod::kReverseKL, kl64(ls, lt)}, {tcod::kJSD, kl64(ls, lm)}};
    for (const Case& k : cases) {
      const auto loss = [&](const Row& z) {
        const auto l = log_softmax64(z);
        if (k.div == tcod::kForwardKL) return kl64(lt, l);
        if (k.div == tcod::kReverseKL) return kl64(l, lt);
        return jsd64(l, lt, beta);
      };
      const auto want = numeric_grad(zs, loss);
      for (int i = 0; i < n; ++i) {
        const float got = tcod::kl_grad(static_cast<float>(ls[i]), static_cast<float>(lt[i]),
                                        static_cast<float>(k.c), k.div, beta, lb, l1b);
        expect_close("kl_grad", got, want[i], 2e-3, 2e-5);
      }
    }

    const int target = static_cast<int>(gen() % n);
    const float g_logp = 0.7f, g_ent = -1.3f;
    const auto objective = [&](const Row& z) {
      const auto l = log_softmax64(z);
      return g_logp * l[target] + g_ent * entropy64(l);
    };
    const auto want = numeric_grad(zs, objective);
    const double h = entropy64(ls);
    for (int i = 0; i < n; ++i) {
      const float got = tcod::logprob_grad(static_cast<float>(ls[i]), i == target, static_cast<float>(h), g_logp, g_ent);
      expect_close("logprob_grad", got, want[i], 2e-3, 2e-5);
    }
  }
}

void check_edge_cases() {
  // A row whose every logit is -inf keeps an empty state; -inf never meets -inf in exp.
  tcod::SoftmaxMoment st = tcod::moment_empty();
  tcod::moment_push(st, -INFINITY);
  expect_close("empty s", st.s, 0.0, 0, 0);
  tcod::moment_push(st, 2.f);
  tcod::moment_push(st, 2.f);
  expect_close("two equal logits: lse", st.m + std::log(st.s), 2.0 + std::log(2.0), 1e-6, 1e-6);
  expect_close("two equal logits: entropy", tcod::moment_entropy(st), std::log(2.0), 1e-6, 1e-6);
  expect_close("logaddexp(-inf,-inf)", tcod::logaddexp(-INFINITY, -INFINITY), -INFINITY, 0, 0);
  expect_close("logaddexp large", tcod::logaddexp(1000.f, 1000.f), 1000.0 + std::log(2.0), 1e-6, 0);
  // A zero-probability column adds nothing to any loss or gradient (no 0 * inf).
  const tcod::JSDTerms t = tcod::jsd_terms(-INFINITY, -1.f, 0.5f, std::log(0.5f), std::log(0.5f));
  expect_close("jsd term with p_s = 0: ksm", t.ksm, 0.0, 0, 0);
  expect_close("reverse grad with p_s = 0", tcod::kl_grad(-INFINITY, -1.f, 0.3f, tcod::kReverseKL, 0.5f, 0, 0), 0.0,
               0, 0);
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  check_statistics(gen);
  check_gradients(gen);
  check_edge_cases();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("host math test: all checks passed\n");
  return 0;
}
