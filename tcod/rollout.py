"""Multi-turn, token-in/token-out rollouts across parallel environments.

The student plays episodes in batches: every environment that waits for an action gets
one row of a batched sampling call (:func:`sample`, KV cache, own ``torch.Generator`` per
row). Nothing is ever re-tokenized: each sample keeps the exact ids the sampler produced
and the sampler's log-probs, cut into spans with roles and turn indices
(:class:`tcod_kernels.packing.Trajectory`).

Two context layouts (``rollout.context``):

* ``"window"`` (the paper's): every turn is its own sample, a fresh prompt built by
  :mod:`tcod.envs.prompt` (task, the last ``history`` observation/action pairs, current
  observation, admissible actions) plus the response. Turn ``t``'s sample has turn index t.
* ``"chat"``: one growing conversation per episode. A new user turn is appended as tokens:
  only the new message is rendered, as the chat template's delta
  (:class:`ChatFormat`), never the history.

b2f: the first ``window.replay`` turns replay the expert's actions. In ``chat`` they stay in
the context with role ``"expert"`` (never trained); in ``window`` they only enter later
prompts' history. The student then plays until the episode ends, ``window.max_turns`` turns
have been played in total, or the context limit is reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from tcod.curriculum import Window
from tcod.envs import prompt as env_prompt
from tcod_kernels.packing import Trajectory

STOP_TEXT = "</action>"


# --------------------------------------------------------------------------- sampling


@dataclass
class Sampled:
    """One row's continuation: the drawn ids, their log-probs and why it stopped."""

    token_ids: List[int]
    logprobs: List[float]
    stop: str  # "eos" | "stop_text" | "length"


def _top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Log-probs with the tokens outside the top-p nucleus set to -inf."""
    sorted_lp, order = logp.sort(dim=-1, descending=True)
    p = sorted_lp.exp()
    drop = p.cumsum(-1) - p > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
    return torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_lp)


def _cache_of(output):
    """``(argument name, KV cache)`` of a forward output: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    cache = getattr(output, "cache", None)
    if cache is not None:
        return "cache", cache
    return "past_key_values", output.past_key_values


@torch.no_grad()
def sample(model, contexts: Sequence[Sequence[int]], seeds: Sequence[int], *, max_new_tokens: int,
           temperature: float, top_p: float = 1.0, eos_ids: Sequence[int] = (), stop_text: str = "",
           tokenizer=None, pad_id: int = 0) -> List[Sampled]:
    """Samples up to ``max_new_tokens`` per context; a row stops at an EOS id or ``stop_text``.

    Rows are left-padded and prefilled together, then decode one token a step through the
    KV cache. Row ``i`` draws from ``torch.Generator().manual_seed(seeds[i])``, so its tokens
    do not depend on the other rows. The recorded log-prob is ``log_softmax(logits / T)``
    at the drawn id (before top-p truncation).
    """
    if len(contexts) != len(seeds):
        raise ValueError(f"contexts ({len(contexts)}) and seeds ({len(seeds)}) must have the same length")
    if stop_text and tokenizer is None:
        raise ValueError("stop_text needs the tokenizer to decode the sampled ids")
    B = len(contexts)
    if B == 0:
        return []
    device = next(model.parameters()).device
    longest = max(len(c) for c in contexts)
    input_ids = torch.full((B, longest), pad_id, dtype=torch.long)
    attention = torch.zeros((B, longest), dtype=torch.long)
    for i, c in enumerate(contexts):
        input_ids[i, longest - len(c):] = torch.tensor(list(c), dtype=torch.long)
        attention[i, longest - len(c):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    position = (attention.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    eos = torch.tensor(sorted({int(e) for e in eos_ids}) or [-1], device=device)

    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position, use_cache=True, logits_to_keep=1)
    results = [Sampled([], [], "length") for _ in range(B)]
    done = [False] * B
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].float() / temperature, dim=-1)
        probs = (_top_p_filter(logp, top_p) if top_p < 1.0 else logp).exp()
        tokens = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0] for i in range(B)])
        token_lp = logp.gather(-1, tokens[:, None])[:, 0].tolist()
        is_eos = torch.isin(tokens, eos).tolist()
        for i in range(B):
            if done[i]:
                continue
            results[i].token_ids.append(int(tokens[i]))
            results[i].logprobs.append(token_lp[i])
            if is_eos[i]:
                done[i], results[i].stop = True, "eos"
            elif stop_text and stop_text in tokenizer.decode(results[i].token_ids[-16:], skip_special_tokens=False):
                done[i], results[i].stop = True, "stop_text"
        if all(done):
            break
        attention = torch.cat([attention, attention.new_ones(B, 1)], dim=1)
        position = position[:, -1:] + 1
        out = model(input_ids=tokens[:, None], attention_mask=attention, position_ids=position,
                    use_cache=True, **dict([_cache_of(out)]))
    return results


# --------------------------------------------------------------------------- chat template deltas


class ChatFormat:
    """Token ids of chat-template pieces, rendered once per message, never for the history.

    ``first(text)``: system (if any) + user message + assistant header.
    ``user_delta(text)``: what the template adds for one more user message + assistant
    header after a finished assistant turn (found by rendering a fixed two-message
    conversation with and without the new message and taking the text difference).
    ``close``: the tokens that end an assistant turn (e.g. ``<|im_end|>\\n``);
    :meth:`closing` gives the part a sampled turn still lacks.
    """

    def __init__(self, tokenizer, system_prompt: Optional[str] = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the student tokenizer has no chat_template; rollouts need a chat model")
        self.tok = tokenizer
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        base = self.system + [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
        base_text = self._render(base, False)
        with_user = self._render(base + [{"role": "user", "content": "\x00"}], True)
        if not with_user.startswith(base_text):
            raise ValueError("the chat template re-renders earlier turns when a message is added; "
                             "use rollout.context=window with this tokenizer")
        self._delta_head, _, self._delta_tail = with_user[len(base_text):].partition("\x00")
        header = self._render(base[:-1], True)
        if not base_text.startswith(header + "A"):
            raise ValueError("cannot locate the end-of-turn marker of the assistant in the chat template")
        self.close = self._encode(base_text[len(header) + 1:])
        self.eos_ids = sorted({i for i in (tokenizer.eos_token_id, self.close[0] if self.close else None) if i is not None})

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def first(self, text: str) -> List[int]:
        return self._encode(self._render(self.system + [{"role": "user", "content": text}], True))

    def user_delta(self, text: str) -> List[int]:
        return self._encode(self._delta_head + text + self._delta_tail)

    def closing(self, sampled: Sequence[int]) -> List[int]:
        """The end-of-turn ids to append after a sampled assistant turn."""
        if sampled and self.close and sampled[-1] == self.close[0]:
            return self.close[1:]
        return list(self.close)

    def assistant(self, text: str) -> List[int]:
        """A whole assistant turn written by someone else (an expert), end-of-turn included."""
        return self._encode(text) + list(self.close)


# --------------------------------------------------------------------------- episodes


@dataclass
class Job:
    """One episode to play: the task, its curriculum window, expert actions and a seed."""

    task: str
    window: Window
    seed: int
    expert: Optional[List[str]] = None


@dataclass
class Episode:
    """A played episode: its training samples and outcome."""

    task: str
    window: Window
    samples: List[Trajectory] = field(default_factory=list)
    success: bool = False
    score: float = 0.0
    rounds: int = 0          # environment steps, replayed ones included
    student_turns: int = 0
    end: str = ""            # "done" | "max_turns" | "context"


class _Live:
    """Book-keeping of one episode in progress."""

    def __init__(self, env, job: Job, episode: Episode):
        self.env, self.job, self.ep = env, job, episode
        self.obs = None
        self.turn = 0
        self.history: List[tuple] = []  # (observation text, action) pairs played so far
        self.chunks: List[tuple] = []   # chat mode: (role, ids, turn)
        self.logprobs: List[float] = []
        self.pending: List[int] = []    # chat mode: ids closing the previous assistant turn
        self.context: List[int] = []


class RolloutRunner:
    """Plays :class:`Job` s with the student over parallel environments."""

    def __init__(self, model, tokenizer, *, context: str = "window", history: int = 2, max_turn_tokens: int = 512,
                 max_context_tokens: int = 16384, temperature: float = 1.0, top_p: float = 1.0,
                 system_prompt: Optional[str] = None):
        if context not in ("window", "chat"):
            raise ValueError(f"rollout.context must be 'window' or 'chat', got {context!r}")
        self.model, self.tok = model, tokenizer
        self.context_mode, self.history = context, history
        self.max_turn_tokens, self.max_context_tokens = max_turn_tokens, max_context_tokens
        self.temperature, self.top_p = temperature, top_p
        self.chat = ChatFormat(tokenizer, system_prompt)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- prompts -------------------------------------------------------------------
    def _prompt_text(self, live: _Live, with_history: bool = True) -> str:
        """The paper's prompt for turn ``live.turn`` (:func:`tcod.envs.prompt.build_prompt`)."""
        return env_prompt.build_prompt(
            live.obs.task or live.env.task_description, live.obs, live.history if with_history else (),
            history_length=self.history if with_history else 0, step=live.turn, env_name=live.env.name)

    def _observation_chunk(self, live: _Live):
        """Chat mode: the ids announcing observation ``live.turn`` (role, ids).

        Turn 0 is the full prompt; later turns add only the new observation and admissible
        actions (the history is already in the conversation).
        """
        if live.turn == 0:
            return "prompt", self.chat.first(self._prompt_text(live))
        return "observation", live.pending + self.chat.user_delta(self._prompt_text(live, with_history=False))

    def _next_context(self, live: _Live) -> Optional[List[int]]:
        """The ids the student continues at this turn, or None past the context limit."""
        if self.context_mode == "window":
            ids = self.chat.first(self._prompt_text(live))
            live.chunks = [("prompt", ids, live.turn)]
        else:
            role, ids = self._observation_chunk(live)
            live.chunks.append((role, ids, live.turn))
            live.pending = []
            ids = live.context + ids
        if len(ids) + self.max_turn_tokens > self.max_context_tokens:
            return None
        live.context = ids
        return ids

    # -- environment ---------------------------------------------------------------
    def _step(self, live: _Live, reply: str, expert: bool = False) -> bool:
        """Plays an expert action or the action parsed from a reply; True when the episode is over.

        A reply without a usable action is a no-op turn (:func:`tcod.envs.prompt.step_text`).
        """
        before = live.obs.text
        if expert:
            live.obs, _, done, info = live.env.step(reply)
            action = reply
        else:
            live.obs, _, done, info = env_prompt.step_text(live.env, reply)
            action = info["action"] or " ".join(reply.split())[:100]
        live.history.append((before, action))
        live.turn += 1
        live.ep.rounds = live.turn
        live.ep.success = bool(info.get("success", False))
        live.ep.score = float(info.get("score", 0.0))
        if done:
            live.ep.end = "done"
        elif live.turn >= live.job.window.max_turns:
            live.ep.end, done = "max_turns", True
        return done

    def _replay(self, live: _Live) -> bool:
        """b2f: plays the expert prefix; True when the episode ended inside it."""
        for t in range(live.job.window.replay):
            action = live.job.expert[t]
            if self.context_mode == "chat":
                if self._next_context(live) is None:
                    live.ep.end = "context"
                    return True
                ids = self.chat.assistant(f"<action>{action}</action>")
                live.chunks.append(("expert", ids, live.turn))
                live.context = live.context + ids
            if self._step(live, action, expert=True):
                return True
        return False

    def _record(self, live: _Live, out: Sampled):
        """Keeps the sampled turn (exact ids + log-probs) in the episode's samples."""
        if self.context_mode == "window":
            live.ep.samples.append(Trajectory.from_chunks(
                live.chunks + [("assistant", out.token_ids, live.turn)], logprobs=out.logprobs,
                meta={"task": live.job.task, "turn": live.turn}))
        else:
            live.chunks.append(("assistant", out.token_ids, live.turn))
            live.logprobs.extend(out.logprobs)
            live.context = live.context + out.token_ids
            live.pending = self.chat.closing(out.token_ids)
        live.ep.student_turns += 1

    def _finish(self, live: _Live):
        if self.context_mode == "chat" and live.ep.student_turns:
            chunks = live.chunks
            while chunks[-1][0] != "assistant":  # drop an observation nothing answers
                chunks = chunks[:-1]
            live.ep.samples = [Trajectory.from_chunks(chunks, logprobs=live.logprobs,
                                                      meta={"task": live.job.task, "turn": 0})]

    # -- main ----------------------------------------------------------------------
    def run(self, envs: Sequence, jobs: Sequence[Job]) -> List[Episode]:
        """Plays ``jobs`` (at most ``len(envs)`` at once); episodes in job order."""
        if not envs:
            raise ValueError("run needs at least one environment")
        episodes = [Episode(job.task, job.window) for job in jobs]
        for start in range(0, len(jobs), len(envs)):
            wave = list(range(start, min(start + len(envs), len(jobs))))
            self._play_wave([_Live(envs[k], jobs[i], episodes[i]) for k, i in enumerate(wave)])
        return episodes

    def _play_wave(self, lives: List[_Live]):
        active = []
        for live in lives:
            if live.job.window.replay and not live.job.expert:
                raise ValueError(f"task {live.job.task!r}: b2f replay needs expert actions")
            live.obs = live.env.reset(live.job.task)
            if not self._replay(live):
                active.append(live)
        was_training = self.model.training
        self.model.eval()
        try:
            while active:
                contexts, ready = [], []
                for live in active:
                    ids = self._next_context(live)
                    if ids is None:
                        live.ep.end = "context"
                        self._finish(live)
                    else:
                        contexts.append(ids)
                        ready.append(live)
                outs = sample(self.model, contexts, [lv.job.seed * 1000 + lv.turn for lv in ready],
                              max_new_tokens=self.max_turn_tokens, temperature=self.temperature, top_p=self.top_p,
                              eos_ids=self.chat.eos_ids, stop_text=STOP_TEXT, tokenizer=self.tok, pad_id=self.pad_id)
                active = []
                for live, out in zip(ready, outs):
                    self._record(live, out)
                    if self._step(live, self.tok.decode(out.token_ids, skip_special_tokens=True)):
                        self._finish(live)
                    else:
                        active.append(live)
        finally:
            self.model.train(was_training)
