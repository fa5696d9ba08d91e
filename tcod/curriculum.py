"""Temporal curricula: which turns of an episode the student plays and is trained on.

Driven by the trainer's own step counter (never wall time), so a resumed run gets the same
windows. The methods (DESIGN.md section 1):

* ``opd``: full depth from step 0: the student plays turns ``0 .. max_turns-1``.
* ``f2b``: the student plays only the first ``k = min(k_start + step // eta, max_turns)``
  turns; all of them are trained.
* ``b2f``: the environment is replayed along the expert's actions (length ``L``) up to the
  checkpoint ``c = max(0, L - 1 - step // eta)``; the student plays from turn ``c`` to the
  end. Replayed turns are context only, never trained.
* ``adaptive``: f2b-shaped, but the depth grows when the KL at the frontier turn settles.
  Rule: after each step the trainer reports the mean per-token KL of turn ``k - 1`` (the
  deepest turn played); the curriculum keeps an EMA ``m`` of it
  (``m <- ema * m + (1 - ema) * x``). Once the depth has been held for at least
  ``min_steps`` steps and the EMA moved by less than ``tol`` relative to its previous value
  (``|m_new - m_old| <= tol * max(|m_old|, 1e-8)``), ``k`` grows by one and the EMA
  restarts. A step where no trajectory reached the frontier (all ended earlier) counts as
  settled: a deeper window cannot change anything there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Window:
    """What one episode does at a given step.

    ``replay``: expert actions replayed first (context only, never trained).
    ``max_turns``: total environment turns of the episode, replayed ones included.
    The student plays turns ``replay .. max_turns - 1`` (fewer when the episode ends) and
    every turn it plays is trained.
    """

    replay: int
    max_turns: int


class Curriculum:
    """Depth schedule of one run; see the module doc for the formulas."""

    METHODS = ("opd", "f2b", "b2f", "adaptive")

    def __init__(self, method: str, *, max_turns: int, eta: int = 4, k_start: int = 1,
                 adaptive_tol: float = 0.05, adaptive_ema: float = 0.8, adaptive_min_steps: int = 2):
        if method not in self.METHODS:
            raise ValueError(f"curriculum.method must be one of {self.METHODS}, got {method!r}")
        for key, value in (("env.max_steps", max_turns), ("curriculum.eta", eta), ("curriculum.k_start", k_start),
                           ("curriculum.adaptive_min_steps", adaptive_min_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        self.method = method
        self.max_turns = max_turns
        self.eta = eta
        self.k_start = min(k_start, max_turns)
        self.tol = float(adaptive_tol)
        self.ema = float(adaptive_ema)
        self.min_steps = adaptive_min_steps
        # adaptive state
        self.depth = self.k_start
        self.kl_ema: Optional[float] = None
        self.steps_at_depth = 0

    @classmethod
    def from_config(cls, cfg) -> "Curriculum":
        c = cfg.curriculum
        return cls(c.method, max_turns=cfg.env.max_steps, eta=c.eta, k_start=c.k_start,
                   adaptive_tol=c.adaptive_tol, adaptive_ema=c.adaptive_ema, adaptive_min_steps=c.adaptive_min_steps)

    def f2b_depth(self, step: int) -> int:
        return min(self.k_start + step // self.eta, self.max_turns)

    def b2f_checkpoint(self, step: int, expert_len: int) -> int:
        c = max(0, expert_len - 1 - step // self.eta)
        return min(c, self.max_turns - 1)

    def window(self, step: int, expert_len: Optional[int] = None) -> Window:
        """The window of one episode at ``step``; b2f needs the expert path length."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        if self.method == "opd":
            return Window(0, self.max_turns)
        if self.method == "f2b":
            return Window(0, self.f2b_depth(step))
        if self.method == "adaptive":
            return Window(0, self.depth)
        if expert_len is None:
            raise ValueError("b2f needs the expert action sequence of every task (env.expert_actions returned None)")
        return Window(self.b2f_checkpoint(step, expert_len), self.max_turns)

    def summary(self, step: int) -> float:
        """One number for the metrics: depth (turns played) or, for b2f, stage ``step // eta``."""
        if self.method == "b2f":
            return float(step // self.eta)
        return float(self.window(step).max_turns)

    def update(self, frontier_kl: Optional[float]) -> None:
        """Adaptive only: feed the mean KL of turn ``depth - 1`` after a step (None: not reached)."""
        if self.method != "adaptive":
            return
        self.steps_at_depth += 1
        if frontier_kl is None:
            settled = True
        else:
            old = self.kl_ema
            new = frontier_kl if old is None else self.ema * old + (1 - self.ema) * frontier_kl
            self.kl_ema = new
            settled = old is not None and abs(new - old) <= self.tol * max(abs(old), 1e-8)
        if settled and self.steps_at_depth >= self.min_steps and self.depth < self.max_turns:
            self.depth += 1
            self.kl_ema = None
            self.steps_at_depth = 0

    def state_dict(self) -> dict:
        return {"method": self.method, "depth": self.depth, "kl_ema": self.kl_ema, "steps_at_depth": self.steps_at_depth}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method:
            raise ValueError(f"checkpoint curriculum method {state.get('method')!r} differs from {self.method!r}")
        self.depth = int(state["depth"])
        self.kl_ema = state["kl_ema"]
        self.steps_at_depth = int(state["steps_at_depth"])
