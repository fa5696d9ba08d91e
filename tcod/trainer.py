"""The TCOD training loop: rollout -> curriculum window -> pack -> score -> loss -> step.

Read it top to bottom: :meth:`Trainer.train` runs the steps; one step is
:meth:`Trainer.rollout` (the student plays its share of the step's tasks, inside the
curriculum's windows) and :meth:`Trainer.update` (pack the samples, mask the window, score
with the teacher, fused loss, backward, optimizer step), then metrics, evaluation and
checkpoints. Runs on one process by default; ``accelerate launch`` (or ``torchrun``) gives
DDP, each process playing ``tasks[rank::world]`` of the step's tasks.

Determinism: task order comes from ``(seed, epoch)``, each episode samples from its own
generator seeded by ``(seed, step, slot)``; so a resumed run, or a run on another number of
processes, plays the same episodes as an uninterrupted one-process run.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from typing import Dict, List, Optional

import torch
import yaml
from tqdm.auto import tqdm

from tcod import checkpoint
from tcod.curriculum import Curriculum
from tcod.evaluate import evaluate
from tcod.losses import full_kl_loss, present_sequences, sampled_opd_loss, token_weights
from tcod.metrics import MetricsLogger, peak_memory_gb
from tcod.models import load_models
from tcod.rollout import Episode, Job, RolloutRunner
from tcod.teacher import LocalTeacher, RemoteTeacher
from tcod_kernels import fused_logprobs
from tcod_kernels.hf import lm_head_params, packed_hidden_states
from tcod_kernels.packing import Trajectory, first_fit_decreasing, pack


class Policy(torch.nn.Module):
    """The student as DDP sees it: packed batch in, last hidden states out (no logits)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, batch):
        return packed_hidden_states(self.lm, batch)


def lr_lambda(cfg):
    """Multiplier of the base learning rate at an optimizer step: warmup, then the schedule."""
    warm, total, kind = cfg.train.warmup_steps, cfg.train.steps * cfg.train.mini_batches, cfg.train.schedule

    def f(i: int) -> float:
        if warm and i < warm:
            return (i + 1) / warm
        if kind == "constant":
            return 1.0
        frac = min(1.0, (i - warm) / max(1, total - warm))
        return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def resolve_precision(cfg) -> str:
    """``train.mixed_precision`` with ``auto`` resolved: bf16 on a CUDA device that supports it, else no."""
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"


def job_seed(seed: int, step: int, slot: int) -> int:
    return ((seed * 100_003 + step) * 4_099 + slot) % 2**40


class Trainer:
    """One run. ``models`` may inject ``(student, teacher, tokenizer, vocab_size)``; ``envs`` a list of envs."""

    def __init__(self, cfg, run_dir: str, *, accelerator=None, models=None, envs=None, resume: bool = False):
        from accelerate import Accelerator

        if cfg.rollout.engine == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("rollout.engine=vllm needs the vllm package, which is not installed; "
                                 "use rollout.engine=hf")
            raise ValueError("rollout.engine=vllm: this version has no vLLM rollout engine (no weight sync "
                             "from the trainer to a vLLM engine yet); use rollout.engine=hf")
        self.cfg = cfg
        self.run_dir = run_dir
        self.precision = resolve_precision(cfg)
        self.acc = accelerator or Accelerator(cpu=cfg.train.device == "cpu", mixed_precision=self.precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if cfg.rollout.tasks_per_step < self.world:
            raise ValueError(f"rollout.tasks_per_step ({cfg.rollout.tasks_per_step}) must be >= the number of "
                             f"processes ({self.world})")
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        os.makedirs(run_dir, exist_ok=True)

        # models, optimizer, schedule
        need_teacher = cfg.teacher.mode == "local"
        student, teacher, self.tokenizer, self.vocab_size = models or load_models(cfg, need_teacher=need_teacher)
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                      weight_decay=cfg.train.weight_decay)
        self.policy, self.optimizer = self.acc.prepare(Policy(student), optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        if need_teacher:
            self.teacher = LocalTeacher(teacher.to(self.acc.device), temperature=cfg.loss.temperature,
                                        backend=cfg.loss.backend)
        else:
            self.teacher = RemoteTeacher(cfg.teacher.url, cfg.teacher.model_name or cfg.model.teacher,
                                         timeout_s=cfg.teacher.timeout_s)
        self.curriculum = Curriculum.from_config(cfg)

        # environments
        self.envs = envs or [self._make_env() for _ in range(cfg.rollout.num_envs)]
        self.train_tasks = self.envs[0].tasks(cfg.env.train_split)
        if not self.train_tasks:
            raise ValueError(f"env.train_split {cfg.env.train_split!r} has no tasks")
        self._expert_cache: Dict[str, Optional[list]] = {}
        self.step = 0

        if resume:
            self._resume()
        if self.acc.is_main_process:
            with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as fh:
                yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
        self.logger = MetricsLogger(run_dir, main=self.acc.is_main_process, tensorboard=cfg.train.tensorboard,
                                    wandb=cfg.train.wandb, wandb_project=cfg.train.wandb_project,
                                    config=cfg.to_dict(), resume_step=self.step if resume else None)

    def _make_env(self):
        import tcod.envs

        options = dict(self.cfg.env.options)
        options.setdefault("max_steps", self.cfg.env.max_steps)
        return tcod.envs.make(self.cfg.env.name, **options)

    @property
    def student(self):
        return self.acc.unwrap_model(self.policy).lm

    def runner(self, temperature: float) -> RolloutRunner:
        r = self.cfg.rollout
        return RolloutRunner(self.student, self.tokenizer, context=r.context, history=self.cfg.env.history,
                             max_turn_tokens=r.max_turn_tokens, max_context_tokens=r.max_context_tokens,
                             temperature=temperature, top_p=r.top_p, system_prompt=r.system_prompt or None)

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        cfg = self.cfg
        show = cfg.train.progress and self.acc.is_main_process
        if self.step == 0 and cfg.train.eval_at_start:
            self.logger.log(0, self.evaluate())  # the student before distillation
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", disable=not show)
        while self.step < cfg.train.steps:
            step = self.step
            t0 = time.perf_counter()
            if self.acc.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.acc.device)
            episodes = self.rollout(step)
            t1 = time.perf_counter()
            metrics = self.update(step, episodes)
            t2 = time.perf_counter()
            self.curriculum.update(metrics.pop("_frontier_kl"))
            metrics.update(rollout_s=t1 - t0, update_s=t2 - t1, step_s=t2 - t0,
                           tokens_per_s=metrics["tokens"] / max(t2 - t1, 1e-9),
                           peak_mem_gb=peak_memory_gb(self.acc.device))
            self.step = step + 1
            last = self.step == cfg.train.steps
            if (cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or last:
                metrics.update(self.evaluate())
            self.logger.log(self.step, metrics)
            if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or last:
                self.save()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", kl=f"{metrics['kl_traj']:.3f}",
                            depth=metrics["depth"], success=f"{metrics['success']:.2f}")
        bar.close()
        if self.acc.is_main_process:
            final = os.path.join(self.run_dir, "final")
            self.student.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        self.logger.close()

    # ------------------------------------------------------------------ rollout

    def step_tasks(self, step: int) -> List[str]:
        """The step's tasks: consecutive slots of a per-epoch shuffle of the train split."""
        n, k = len(self.train_tasks), self.cfg.rollout.tasks_per_step
        tasks = []
        for slot in range(step * k, (step + 1) * k):
            epoch, i = divmod(slot, n)
            order = list(range(n))
            random.Random(self.cfg.train.seed * 7_919 + epoch).shuffle(order)
            tasks.append(self.train_tasks[order[i]])
        return tasks

    def expert(self, task: str) -> Optional[list]:
        if task not in self._expert_cache:
            self._expert_cache[task] = self.envs[0].expert_actions(task)
        return self._expert_cache[task]

    def rollout(self, step: int) -> List[Episode]:
        """This process's episodes of the step, each inside its curriculum window."""
        jobs = []
        for slot, task in list(enumerate(self.step_tasks(step)))[self.rank::self.world]:
            expert = self.expert(task) if self.curriculum.method == "b2f" else None
            window = self.curriculum.window(step, None if expert is None else len(expert))
            jobs.append(Job(task, window, job_seed(self.cfg.train.seed, step, slot), expert))
        with self.acc.autocast():
            return self.runner(self.cfg.rollout.temperature).run(self.envs, jobs)

    # ------------------------------------------------------------------ update

    def _rows(self, samples):
        """Packs samples into micro-batch rows (one PackedBatch per row) with their window bounds."""
        cap = max(self.cfg.train.micro_batch_tokens, max(len(s[0]) for s in samples))
        rows, _ = first_fit_decreasing([len(s[0]) for s in samples], cap)
        out = []
        for members in rows:
            trs = [samples[i][0] for i in members]
            batch = pack(trs, cap, pad_id=self.tokenizer.pad_token_id or 0, device=self.acc.device)
            windows = [samples[i][1] for i in members]
            mask = batch.window_mask([w.replay for w in windows], [w.max_turns for w in windows])
            out.append((batch, mask, trs, [samples[i][2] for i in members]))
        return out

    def update(self, step: int, episodes: List[Episode]) -> dict:
        """One optimizer step per mini-batch over this process's samples; returns reduced metrics."""
        cfg, L = self.cfg, self.cfg.loss
        samples = [(s, ep.window, e) for e, ep in enumerate(episodes) for s in ep.samples]
        max_turns = cfg.env.max_steps
        acc = dict(loss=0.0, kl_sum=0.0, gap_sum=0.0, clip_sum=0.0, trained=0.0, tokens=0.0, grad_norm=0.0)
        turn_kl, turn_n = torch.zeros(max_turns, dtype=torch.float64), torch.zeros(max_turns, dtype=torch.float64)
        episode_kl = torch.zeros(len(episodes), dtype=torch.float64)
        weight, bias = self._head()
        groups = [samples[i::cfg.train.mini_batches] for i in range(cfg.train.mini_batches)]
        old = self._old_logprobs(groups) if cfg.train.mini_batches > 1 and L.ratio_base == "trainer" else None
        for g, group in enumerate(groups):
            rows = self._rows(group) if group else []
            # normalizers over every process's rows, so the DDP gradient mean equals one big batch
            total_tok, total_seq = self._reduce([sum(int(m.sum()) for _, m, _, _ in rows),
                                                 sum(present_sequences(m, b.seq_ids) for b, m, _, _ in rows)])
            for r, (batch, mask, trs, ep_index) in enumerate(rows):
                sync = r == len(rows) - 1
                with (self.acc.no_sync(self.policy) if not sync else contextlib.nullcontext()):
                    w = token_weights(mask, batch.seq_ids, batch.num_sequences, L.aggregation,
                                      total=total_tok if L.aggregation == "token-mean" else total_seq) * self.world
                    targets = batch.target_ids.masked_fill(~mask, -100)
                    hidden = self.policy(batch).to(weight.dtype)
                    if L.kind == "sampled":
                        s_lp = fused_logprobs(hidden, weight, targets, bias=bias, temperature=L.temperature,
                                              backend=L.backend)
                        t_lp = self.teacher.token_logprobs(batch, targets, trs)
                        loss, stats = sampled_opd_loss(
                            s_lp, t_lp, batch.sampler_logprobs, w, mask, kl_coef=L.kl_coef, clip_low=L.clip_low,
                            clip_high=L.clip_high, ratio_base=L.ratio_base,
                            old_lp=None if old is None else old[g][r], tis_cap=L.tis_cap)
                        kl_tok = ((s_lp.detach() - t_lp) * mask).float()
                        acc["clip_sum"] += float(stats["clip_frac"]) * int(mask.sum())
                    else:
                        t_weight, t_bias = self.teacher.lm_head()
                        loss, kl_tok = full_kl_loss(
                            hidden, weight, self.teacher.hidden_states(batch).to(t_weight.dtype), t_weight, w, mask,
                            student_bias=bias, teacher_bias=t_bias, divergence=L.divergence, beta=L.jsd_beta,
                            temperature=L.temperature, vocab_size=self.vocab_size, backend=L.backend)
                        with torch.no_grad():
                            s_lp = fused_logprobs(hidden.detach(), weight.detach(), targets,
                                                  bias=None if bias is None else bias.detach(),
                                                  temperature=L.temperature, backend=L.backend)
                    self.acc.backward(loss)
                self._account(acc, turn_kl, turn_n, episode_kl, batch, mask, kl_tok, s_lp, loss, ep_index)
            if not rows:  # nothing to train on this process: join the gradient sync with a zero loss
                self._zero_backward(weight)
            if cfg.train.grad_clip:
                acc["grad_norm"] += float(self.acc.clip_grad_norm_(self.policy.parameters(), cfg.train.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return self._reduce_metrics(step, episodes, acc, turn_kl, turn_n, episode_kl)

    def _zero_backward(self, weight) -> None:
        """A forward through the (DDP) policy on two pad tokens and a zero-weighted backward.

        Keeps every process's gradient all-reduce in step when one has no samples.
        """
        pad = self.tokenizer.pad_token_id or 0
        dummy = pack([Trajectory.from_chunks([("prompt", [pad], 0), ("assistant", [pad], 0)])], 2, pad_id=pad,
                     device=self.acc.device)
        hidden = self.policy(dummy)
        self.acc.backward((hidden.float().sum() + weight.float().sum()) * 0.0)

    def _head(self):
        """The student's lm_head (weight, bias), cast (differentiably) to the autocast dtype.

        The fused kernels accumulate in float32 whatever the input dtype; under bf16/fp16
        mixed precision the GEMMs then run on the half-precision units.
        """
        weight, bias = lm_head_params(self.student)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if half is None:
            return weight, bias
        return weight.to(half), None if bias is None else bias.to(half)

    @torch.no_grad()
    def _old_logprobs(self, groups):
        """Trainer log-probs of every row before any update (PPO ratio base with several mini-batches)."""
        weight, bias = self._head()
        out = []
        for group in groups:
            rows = self._rows(group) if group else []
            out.append([fused_logprobs(self.policy(b).to(weight.dtype), weight, b.target_ids.masked_fill(~m, -100), bias=bias,
                                       temperature=self.cfg.loss.temperature, backend=self.cfg.loss.backend)
                        for b, m, _, _ in rows])
        return out

    def _account(self, acc, turn_kl, turn_n, episode_kl, batch, mask, kl_tok, s_lp, loss, ep_index):
        """Adds one row's numbers to the step's sums (KL per turn and per episode, log-prob gap)."""
        n = int(mask.sum())
        acc["loss"] += float(loss.detach())
        acc["trained"] += n
        acc["tokens"] += batch.num_tokens
        acc["kl_sum"] += float(kl_tok.sum())
        if batch.sampler_logprobs is not None:
            acc["gap_sum"] += float(((s_lp.detach() - batch.sampler_logprobs).abs() * mask).sum())
        ones = mask.float()
        per_turn = batch.turn_reduce(kl_tok, reduction="sum", mask=mask).double().cpu()
        count = batch.turn_reduce(ones, reduction="sum", mask=mask).double().cpu()
        k = min(per_turn.shape[1], turn_kl.numel())
        turn_kl[:k] += per_turn[:, :k].sum(0)
        turn_n[:k] += count[:, :k].sum(0)
        per_seq = batch.sequence_reduce(kl_tok, reduction="sum", mask=mask).double().cpu()
        for i, e in enumerate(ep_index):
            episode_kl[e] += per_seq[i]

    def _reduce(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        if self.world > 1:
            t = self.acc.reduce(t, reduction="sum")
        return t.cpu().tolist()

    def _reduce_metrics(self, step, episodes, acc, turn_kl, turn_n, episode_kl) -> dict:
        cfg = self.cfg
        played = [e for e in episodes if e.student_turns]
        local = [
            float(len(episodes)), float(sum(e.success for e in episodes)), float(sum(e.rounds for e in episodes)),
            float(sum(e.score for e in episodes)), float(sum(e.student_turns for e in episodes)),
            float(sum(e.window.replay for e in episodes)), float(len(played)),
            float(sum(episode_kl[i] for i, e in enumerate(episodes) if e.student_turns)),
            acc["loss"] / max(cfg.train.mini_batches, 1), acc["kl_sum"], acc["gap_sum"], acc["clip_sum"],
            acc["trained"], acc["tokens"], acc["grad_norm"] / cfg.train.mini_batches,
        ] + turn_kl.tolist() + turn_n.tolist()
        s = self._reduce(local)
        (n_ep, succ, rounds, score, turns, replay, n_played, ep_kl, loss, kl_sum, gap, clip, trained, tokens,
         gnorm) = s[:15]
        turn_sum, turn_cnt = s[15:15 + cfg.env.max_steps], s[15 + cfg.env.max_steps:]
        m = {
            "loss": loss / self.world, "kl_traj": ep_kl / max(n_played, 1), "kl_token": kl_sum / max(trained, 1),
            "lp_gap": gap / max(trained, 1), "success": succ / max(n_ep, 1), "score": score / max(n_ep, 1),
            "rounds": rounds / max(n_ep, 1), "student_turns": turns / max(n_ep, 1), "replay": replay / max(n_ep, 1),
            "depth": self.curriculum.summary(step), "trained_tokens": trained, "tokens": tokens,
            "episodes": n_ep, "processes": self.world,
            "grad_norm": gnorm / self.world, "lr": self.scheduler.get_last_lr()[0],
        }
        if cfg.loss.kind == "sampled":
            m["clip_frac"] = clip / max(trained, 1)
        for t, (ks, kn) in enumerate(zip(turn_sum, turn_cnt)):
            if kn:
                m[f"kl_turn/{t}"] = ks / kn
        frontier = self.curriculum.window(step).max_turns - 1 if self.curriculum.method == "adaptive" else None
        m["_frontier_kl"] = m.get(f"kl_turn/{frontier}") if frontier is not None else None
        return m

    # ------------------------------------------------------------------ evaluation, checkpoints

    def evaluate(self) -> dict:
        """Full-depth success and rounds on every eval split (``eval/<split>/<metric>``)."""
        out = {}
        runner = self.runner(self.cfg.rollout.eval_temperature)
        for split in self.cfg.env.eval_splits:
            tasks = self.envs[0].tasks(split)
            if self.cfg.train.eval_tasks:
                tasks = tasks[: self.cfg.train.eval_tasks]
            res = evaluate(runner, self.envs, tasks, max_turns=self.cfg.env.max_steps, seed=self.cfg.train.seed,
                           step=self.step, rank=self.rank, world=self.world, reduce_sum=self._reduce)
            out.update({f"eval/{split}/{k}": v for k, v in res.items()})
        return out

    def state_dict(self) -> dict:
        return {
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "curriculum": self.curriculum.state_dict(),
            "expert_actions": dict(self._expert_cache),  # a resumed b2f run replays the same paths
            "rng": checkpoint.rng_state(),
            "config": self.cfg.to_dict(),
        }

    def save(self) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            checkpoint.save(self.run_dir, self.step, self.state_dict(), keep=self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()

    def _resume(self) -> None:
        path = checkpoint.latest(self.run_dir)
        if path is None:
            return
        state = checkpoint.load(path)
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.curriculum.load_state_dict(state["curriculum"])
        self._expert_cache.update(state.get("expert_actions", {}))
        checkpoint.set_rng_state(state["rng"])
        self.step = int(state["step"])

    def close(self) -> None:
        for env in self.envs:
            env.close()

