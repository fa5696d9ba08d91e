"""Curriculum windows follow the paper's formulas; adaptive rule; resumable state."""

import pytest

from tcod.curriculum import Curriculum, Window


def test_opd_is_full_depth_from_step_zero():
    cur = Curriculum("opd", max_turns=30, eta=2)
    for step in (0, 1, 100):
        assert cur.window(step) == Window(0, 30)


def test_f2b_depth_table():
    cur = Curriculum("f2b", max_turns=5, eta=2, k_start=1)
    # k = min(1 + step // 2, 5), written out by hand
    expected = {0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 7: 4, 8: 5, 9: 5, 50: 5}
    for step, k in expected.items():
        assert cur.window(step) == Window(0, k), step


def test_f2b_k_start():
    cur = Curriculum("f2b", max_turns=10, eta=4, k_start=3)
    assert [cur.window(s).max_turns for s in (0, 3, 4, 8, 100)] == [3, 3, 4, 5, 10]


def test_b2f_checkpoint_table():
    cur = Curriculum("b2f", max_turns=30, eta=3)
    # c = max(0, L - 1 - step // 3) with L = 6
    expected = {0: 5, 2: 5, 3: 4, 6: 3, 12: 1, 15: 0, 99: 0}
    for step, c in expected.items():
        assert cur.window(step, expert_len=6) == Window(c, 30), step
    # never starts past the last turn the episode may run
    assert Curriculum("b2f", max_turns=4, eta=1).window(0, expert_len=10).replay == 3


def test_b2f_needs_expert_length():
    with pytest.raises(ValueError, match="expert"):
        Curriculum("b2f", max_turns=5).window(0)


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="curriculum.method"):
        Curriculum("nope", max_turns=3)
    with pytest.raises(ValueError, match="curriculum.eta"):
        Curriculum("f2b", max_turns=3, eta=0)
    with pytest.raises(ValueError, match="step"):
        Curriculum("f2b", max_turns=3).window(-1)


def test_adaptive_grows_when_frontier_kl_settles():
    cur = Curriculum("adaptive", max_turns=4, k_start=1, adaptive_tol=0.1, adaptive_ema=0.5, adaptive_min_steps=2)
    assert cur.window(0).max_turns == 1
    cur.update(1.0)            # ema 1.0 (first value, not settled)
    assert cur.depth == 1
    cur.update(0.5)            # ema 0.75, moved 25% > 10%
    assert cur.depth == 1
    cur.update(0.75)           # ema 0.75, moved 0% -> grow
    assert cur.depth == 2 and cur.kl_ema is None and cur.steps_at_depth == 0
    cur.update(None)           # frontier not reached: settled, but min_steps=2 not met
    assert cur.depth == 2
    cur.update(None)
    assert cur.depth == 3
    for _ in range(10):
        cur.update(None)
    assert cur.depth == 4      # capped at max_turns


def test_state_dict_roundtrip():
    a = Curriculum("adaptive", max_turns=6, adaptive_min_steps=1, adaptive_tol=0.5)
    for x in (1.0, 1.1, 3.0):
        a.update(x)
    b = Curriculum("adaptive", max_turns=6, adaptive_min_steps=1, adaptive_tol=0.5)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    with pytest.raises(ValueError, match="method"):
        Curriculum("f2b", max_turns=6).load_state_dict(a.state_dict())
