"""tcod.report on hand-written run folders: table numbers, verdict sentences, PNG plots."""

import json

import pytest
import yaml

from tcod import report


def write_run(folder, method, seed, records):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "curriculum": {"method": method}, "train": {"seed": seed}, "env": {"eval_splits": ["dev"]}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def records(kls, before, after, depth_end=3, turn_kl=(0.1, 0.2, 0.4)):
    """One record per step; eval at step 0 (before) and at the last step (after)."""
    out = [{"step": 0, "eval/dev/success": before, "eval/dev/rounds": 8.0, "eval/dev/episodes": 20}]
    for i, kl in enumerate(kls, 1):
        r = {"step": i, "loss": 0.1, "kl_traj": kl, "kl_token": kl / 10, "success": 0.5,
             "depth": depth_end if i == len(kls) else 1}
        r.update({f"kl_turn/{t}": v * kl for t, v in enumerate(turn_kl)})
        out.append(r)
    out[-1].update({"eval/dev/success": after, "eval/dev/rounds": 4.0, "eval/dev/episodes": 20})
    return out


@pytest.fixture
def runs(tmp_path):
    return [
        write_run(tmp_path / "opd_s0", "opd", 0, records([3.0, 2.0, 1.0, 0.9, 0.8, 0.7], 0.10, 0.30)),
        write_run(tmp_path / "opd_s1", "opd", 1, records([3.0, 2.0, 1.0, 1.0, 0.9, 0.8], 0.20, 0.40)),
        write_run(tmp_path / "f2b_s0", "f2b", 0, records([1.0, 1.0, 0.5, 0.3, 0.2, 0.1], 0.10, 0.60)),
        write_run(tmp_path / "f2b_s1", "f2b", 1, records([1.0, 1.0, 0.5, 0.3, 0.3, 0.2], 0.20, 0.70)),
    ]


def test_summary_numbers(runs):
    groups = report.group_runs([report.read_run(p) for p in runs])
    assert list(groups) == ["opd", "f2b"]
    opd = report.summarize_method("opd", groups["opd"], tail=3)
    assert opd.split == "dev"
    assert opd.before_success.mean == pytest.approx(0.15)
    assert opd.after_success.mean == pytest.approx(0.35)
    assert opd.after_rounds.mean == pytest.approx(4.0)
    # last three kl_traj: (0.9+0.8+0.7)/3 and (1.0+0.9+0.8)/3
    assert opd.final_kl.mean == pytest.approx((0.8 + 0.9) / 2)
    assert opd.first_kl.mean == pytest.approx(2.0)
    assert opd.final_token_kl.mean == pytest.approx(0.085)
    f2b = report.summarize_method("f2b", groups["f2b"], tail=3)
    assert f2b.final_kl.mean == pytest.approx((0.2 + (0.3 + 0.3 + 0.2) / 3) / 2)
    assert f2b.after_success.values == [0.6, 0.7]


def test_table_and_verdict(runs, tmp_path):
    text = report.build_report(runs, tmp_path / "out", teacher={"success": 0.9, "rounds": 3.0})
    assert "| teacher | - | 90% | 3.0 | - | - | - |" in text
    assert "| student before | 4 evals | 15% ± 6 | 8.0 ± 0.0 | - | - | - |" in text
    assert "| student after OPD | 2 | 35% ± 7 | 4.0 ± 0.0 | 0.850 ± 0.071 | 0.085 ± 0.007 | 0.200 ± 0.000 |" in text
    assert "OPD: per-token KL to the teacher on the student's own rollouts went from 0.200" in text
    assert "Lowest final trajectory KL: TCOD f2b" in text
    assert "more than twice the seed spread" in text
    assert "Note: TCOD f2b ends at depth 3.0 ± 0.0 of ? turns" in text
    assert "TCOD f2b: eval success rose from 15% to 65%" in text
    assert "Highest success after training: TCOD f2b (65%)" in text
    md = (tmp_path / "out" / "report.md").read_text()
    assert md == text
    for name in ("kl_vs_step.png", "kl_by_turn.png", "success_vs_step.png"):
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_one_seed_says_noise_unknown(tmp_path):
    a = write_run(tmp_path / "a", "opd", 0, records([1.0, 0.9], 0.1, 0.2))
    b = write_run(tmp_path / "b", "b2f", 0, records([1.0, 0.5], 0.1, 0.2))
    text = report.build_report([a, b])
    assert "Lowest final trajectory KL: TCOD b2f" in text
    assert "seed-to-seed noise is unknown" in text
    assert "within twice the sampling error of 20 episodes" in text


def test_student_before_fallback(tmp_path):
    run = write_run(tmp_path / "r", "f2b", 0, records([1.0, 0.5], None, 0.5)[1:])
    text = report.build_report([run], student={"success": 0.25, "rounds": 9.0}, teacher={"success": 0.75, "rounds": 5})
    assert "| student before (build eval) | - | 25% | 9.0 | - | - | - |" in text
    assert "TCOD f2b: eval success rose from 25% to 50% (+25%)" in text


def test_summarize_run_and_errors(runs, tmp_path):
    text = report.summarize_run(runs[0])
    assert "| student after OPD | 1 | 30% | 4.0 |" in text
    with pytest.raises(FileNotFoundError):
        report.read_run(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="not JSON"):
        report.read_run(bad)
