"""End-to-end trainer on CPU: tiny local models, the offline TextWorldExpress environment.

Also the pieces the loop trusts: chat-template deltas, exact sampled ids and log-probs,
loss masks that only cover the student's tokens inside the curriculum window, and the
remote-teacher HTTP client against a local server.
"""

import http.server
import json
import os
import threading

import pytest
import torch

from tcod.config import load_config
from tcod.metrics import read_metrics
from tcod.rollout import ChatFormat, sample


CORPUS = (
    "You are in the kitchen. In one part of the room you see a stove. There is also an oven. You also see a "
    "fridge that is closed. In another part of the room you see a counter, that has nothing on it. To the North "
    "you see the pantry. To the South you see the living room. Your task is to search the environment and find "
    "the coin. Once you find the coin, take it. take coin look around inventory move north move south move east "
    "move west open door You take the coin. Admissible actions: Observation: Task: Previous <think> </think> "
    "<action> </action> You are an agent. Think, then answer with one action. "
)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer():
    """A 400-token byte-level BPE with a ChatML template, trained here on a fixed corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_model(vocab_rows: int, seed: int, hidden: int = 32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, eos_token_id=2, pad_token_id=0)
    return Qwen2ForCausalLM(config).eval()


def save_tiny_pair(root):
    """Student (lm_head padded to 416 rows) and teacher (448 rows) sharing one tokenizer, saved as folders."""
    tok = build_tokenizer()
    paths = {}
    for name, rows, seed, hidden in (("student", 416, 0, 32), ("teacher", 448, 1, 48)):
        path = os.path.join(root, name)
        build_model(rows, seed, hidden).save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    return save_tiny_pair(str(tmp_path_factory.mktemp("tiny_models")))


ENV_OPTIONS = ("{games: [coin], game_params: {coin: 'numLocations=3,numDistractorItems=0,includeDoors=0'}, "
               "tasks_per_game: 6}")


def tiny_overrides(paths, out_dir, method, **extra):
    """Overrides that turn a preset into a seconds-long CPU run on the tiny pair."""
    base = {
        "model.student": paths["student"], "model.teacher": paths["teacher"], "model.dtype": "float32",
        "model.teacher_dtype": "float32", "model.attn_implementation": "sdpa",
        "env.name": "textworld_express", "env.options": ENV_OPTIONS, "env.max_steps": 4, "env.eval_splits": "[dev]",
        "rollout.tasks_per_step": 2, "rollout.num_envs": 2, "rollout.max_turn_tokens": 8,
        "rollout.max_context_tokens": 3000, "curriculum.method": method, "curriculum.eta": 1,
        "train.steps": 3, "train.lr": 1e-3, "train.eval_every": 0, "train.eval_tasks": 2, "train.save_every": 0,
        "train.eval_at_start": False,
        "train.micro_batch_tokens": 2048, "train.output_dir": out_dir, "train.run_name": f"run_{method}",
        "train.device": "cpu", "train.mixed_precision": "no", "train.progress": False, "train.tensorboard": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# --------------------------------------------------------------------------- pieces


def test_chat_delta_equals_full_render():
    tok = build_tokenizer()
    fmt = ChatFormat(tok, system_prompt="You are an agent.")
    first = fmt.first("Task: find the coin.")
    answer = tok.encode("<action>look around</action>", add_special_tokens=False) + [tok.eos_token_id]
    ids = first + answer + fmt.closing(answer) + fmt.user_delta("Observation: You see a coin.")
    full = tok.apply_chat_template(
        [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Task: find the coin."},
         {"role": "assistant", "content": "<action>look around</action>"},
         {"role": "user", "content": "Observation: You see a coin."}], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full
    # an answer cut at </action> (no EOS sampled) gets the whole end-of-turn appended
    assert fmt.closing(answer[:-1]) == tok.encode("<|im_end|>\n", add_special_tokens=False)


def test_sample_keeps_exact_ids_and_sampler_logprobs():
    tok = build_tokenizer()
    model = build_model(416, seed=3)
    contexts = [tok.encode("Task: find the coin.")[:9], tok.encode("You are in the kitchen. There is a stove.")]
    outs = sample(model, contexts, [11, 12], max_new_tokens=6, temperature=0.7)
    for ctx, out in zip(contexts, outs):
        assert len(out.token_ids) == 6 and out.stop == "length"
        full = torch.tensor([ctx + out.token_ids])
        logits = model(full).logits[0].double() / 0.7
        ref = torch.log_softmax(logits, -1)[len(ctx) - 1:-1].gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(out.logprobs, dtype=torch.float64), ref, atol=1e-4)
    alone = sample(model, contexts[1:], [12], max_new_tokens=6, temperature=0.7)
    assert alone[0].token_ids == outs[1].token_ids  # a row's draw does not depend on its batch mates


def test_sample_stops_at_eos_and_stop_text():
    tok = build_tokenizer()
    model = build_model(416, seed=3)
    out = sample(model, [[5, 6, 7]], [0], max_new_tokens=5, temperature=1.0, eos_ids=range(416))[0]
    assert len(out.token_ids) == 1 and out.stop == "eos"
    out = sample(model, [[5, 6, 7]], [0], max_new_tokens=5, temperature=1.0)[0]
    first = tok.decode(out.token_ids[:1])
    stopped = sample(model, [[5, 6, 7]], [0], max_new_tokens=5, temperature=1.0, stop_text=first, tokenizer=tok)[0]
    assert stopped.token_ids == out.token_ids[:1] and stopped.stop == "stop_text"


# --------------------------------------------------------------------------- end to end


def _run(tiny_pair, tmp_path, method, **extra):
    """Trains a few steps in-process; records each step's episodes and packed rows."""
    from tcod.trainer import Trainer

    cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), method, **extra))
    run_dir = os.path.join(str(tmp_path), f"run_{method}")
    trainer = Trainer(cfg, run_dir)
    seen = {"episodes": [], "rows": []}
    rollout, rows = trainer.rollout, trainer._rows

    def rec_rollout(step):
        eps = rollout(step)
        seen["episodes"].append((step, eps))
        return eps

    def rec_rows(samples):
        out = rows(samples)
        seen["rows"].append((trainer.step, out))
        return out

    trainer.rollout, trainer._rows = rec_rollout, rec_rows
    try:
        trainer.train()
        experts = dict(trainer._expert_cache)  # the expert paths the run replayed
    finally:
        trainer.close()
    return cfg, run_dir, seen, experts


def _check_masks(rows, windows_by_traj):
    """Masked targets are exactly the assistant tokens of the window's turns, in order."""
    for batch, mask, trajectories, _ in rows:
        for i, tr in enumerate(trajectories):
            r, o, n = int(batch.seq_rows[i]), int(batch.seq_offsets[i]), int(batch.seq_lengths[i])
            lo, hi = windows_by_traj[id(tr)]
            expected = [int(tok) for span in tr.spans if span.role == "assistant" and lo <= span.turn < hi
                        for tok in tr.token_ids[span.start:span.end]]
            got = batch.target_ids[r, o:o + n][mask[r, o:o + n]].tolist()
            assert got == expected
            trained, _ = tr.token_roles()
            positions = mask[r, o:o + n].nonzero().flatten() + 1  # the token each masked position predicts
            assert trained[positions].all()  # never an observation, prompt or expert token
        assert not mask[batch.seq_ids < 0].any()


REQUIRED = ("loss", "kl_traj", "kl_token", "kl_turn/0", "success", "rounds", "depth", "lp_gap", "tokens_per_s",
            "peak_mem_gb", "grad_norm", "lr")


def _check_run(cfg, run_dir, seen):
    metrics = read_metrics(run_dir)
    if cfg.train.eval_at_start:  # the untrained student's evaluation comes first, as step 0
        before = metrics.pop(0)
        assert before["step"] == 0 and 0.0 <= before["eval/dev/success"] <= 1.0 and "loss" not in before
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for key in REQUIRED:
            if key == "kl_turn/0" and cfg.curriculum.method == "b2f":
                continue
            assert key in m and m[key] is not None, key
        assert m["trained_tokens"] > 0 and m["loss"] == m["loss"]
        assert m["lp_gap"] < 1e-4  # the trainer re-scores exactly the ids and log-probs the sampler produced
    assert "eval/dev/success" in metrics[-1] and metrics[-1]["eval/dev/episodes"] == 2
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))
    assert os.path.exists(os.path.join(run_dir, "final", "config.json"))
    windows = {}
    for step, eps in seen["episodes"]:
        for ep in eps:
            for tr in ep.samples:
                windows[id(tr)] = (ep.window.replay, ep.window.max_turns)
    for _, rows in seen["rows"]:
        _check_masks(rows, windows)
    return metrics


def test_opd_end_to_end(tiny_pair, tmp_path):
    cfg, run_dir, seen, _ = _run(tiny_pair, tmp_path, "opd", **{"train.eval_at_start": True})
    metrics = _check_run(cfg, run_dir, seen)
    for step, eps in seen["episodes"]:
        for ep in eps:
            assert ep.window.replay == 0 and ep.window.max_turns == 4
            # window context: one sample per student turn, turn t's sample carries turn index t
            assert [tr.spans[0].turn for tr in ep.samples] == list(range(ep.student_turns))
            assert ep.student_turns == 4 or ep.end == "done"
    assert all(m["depth"] == 4 for m in metrics)


def test_f2b_end_to_end_follows_its_formula(tiny_pair, tmp_path):
    cfg, run_dir, seen, _ = _run(tiny_pair, tmp_path, "f2b", **{"curriculum.eta": 1, "curriculum.k_start": 1})
    metrics = _check_run(cfg, run_dir, seen)
    for step, eps in seen["episodes"]:
        k = min(1 + step // 1, 4)
        for ep in eps:
            assert ep.window.replay == 0 and ep.window.max_turns == k
            assert ep.student_turns == k or ep.end == "done"
            assert all(span.turn < k for tr in ep.samples for span in tr.spans)
    assert [m["depth"] for m in metrics] == [1, 2, 3]
    assert max(int(key.split("/")[1]) for key in metrics[0] if key.startswith("kl_turn/")) == 0


_DECODER = []


def tokenizer_decode(tr, span):
    if not _DECODER:
        _DECODER.append(build_tokenizer())
    return _DECODER[0].decode(tr.token_ids[span.start:span.end].tolist())


def test_b2f_end_to_end_chat_full_kl(tiny_pair, tmp_path):
    cfg, run_dir, seen, experts = _run(tiny_pair, tmp_path, "b2f", **{
        "curriculum.eta": 1, "rollout.context": "chat", "loss.kind": "full", "loss.divergence": "jsd",
        "env.options": ENV_OPTIONS.replace("numLocations=3", "numLocations=5")})
    _check_run(cfg, run_dir, seen)
    replays = []
    for step, eps in seen["episodes"]:
        for ep in eps:
            c = max(0, len(experts[ep.task]) - 1 - step)
            assert ep.window.replay == min(c, 3)
            replays.append(ep.window.replay)
            assert len(ep.samples) <= 1  # chat: one conversation per episode
            for tr in ep.samples:
                roles = [(s.role, s.turn) for s in tr.spans]
                assert [t for role, t in roles if role == "expert"] == list(range(ep.window.replay))
                replayed = [tokenizer_decode(tr, s) for s in tr.spans if s.role == "expert"]
                assert replayed == [f"<action>{a}</action><|im_end|>\n" for a in experts[ep.task][:ep.window.replay]]
                assert min(t for role, t in roles if role == "assistant") == ep.window.replay
                assert roles[0] == ("prompt", 0)
    assert max(replays) > 0  # the expert prefix really was replayed at step 0


def test_refuses_different_tokenizers(tiny_pair, tmp_path):
    from transformers import AutoTokenizer

    from tcod.models import check_same_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair["student"])
    assert check_same_tokenizer(tok, tok, 416, 448) == 416
    other = build_tokenizer()
    other.add_tokens(["zzz-extra"])
    vocab = other.get_vocab()
    swapped = AutoTokenizer.from_pretrained(tiny_pair["student"])
    swapped.add_tokens(["qqq-extra"])
    assert check_same_tokenizer(tok, swapped, 416, 448) == 416  # extra ids beyond the shared range are fine
    assert vocab["zzz-extra"] == len(other) - 1
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(other, swapped, 416, 448)
    with pytest.raises(ValueError, match="lm_head"):
        check_same_tokenizer(tok, tok, 300, 448)


# --------------------------------------------------------------------------- remote teacher


class _LogprobServer(http.server.BaseHTTPRequestHandler):
    """A minimal OpenAI-style /v1/completions endpoint scoring prompts with a local model."""

    model = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = []
        for index, prompt in enumerate(body["prompt"]):
            ids = torch.tensor([prompt])
            with torch.no_grad():
                logp = torch.log_softmax(self.model(ids).logits[0].double(), -1)
            lps = [None] + logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].tolist() + [-1.0]
            choices.append({"index": index, "text": "x", "logprobs": {"token_logprobs": lps}})
        payload = json.dumps({"choices": choices[::-1]}).encode()  # any order: the client sorts by index
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_remote_teacher_matches_local_teacher(tiny_pair):
    from transformers import AutoModelForCausalLM

    from tcod.teacher import LocalTeacher, RemoteTeacher
    from tcod_kernels.packing import Trajectory, pack

    teacher = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"], dtype=torch.float32).eval()
    _LogprobServer.model = teacher
    server = http.server.HTTPServer(("127.0.0.1", 0), _LogprobServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        trs = [Trajectory.from_chunks([("prompt", [5, 6, 7, 8], 0), ("assistant", [9, 10, 11], 0),
                                       ("observation", [12, 13], 1), ("assistant", [14, 15], 1)]),
               Trajectory.from_chunks([("prompt", [20, 21], 0), ("assistant", [22, 23, 24, 25], 0)])]
        batch = pack(trs, 16)
        remote = RemoteTeacher(f"http://127.0.0.1:{server.server_port}/v1", "tiny", timeout_s=30)
        got = remote.token_logprobs(batch, batch.target_ids, trs)
        want = LocalTeacher(teacher).token_logprobs(batch, batch.target_ids)
        assert batch.loss_mask.sum() == 9
        assert torch.allclose(got, want, atol=1e-4)
        assert (got[~batch.loss_mask] == 0).all()
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="teacher.url"):
        RemoteTeacher("127.0.0.1:9", "tiny")


def test_trainer_with_remote_teacher(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    from tcod.trainer import Trainer

    _LogprobServer.model = AutoModelForCausalLM.from_pretrained(tiny_pair["teacher"], dtype=torch.float32).eval()
    server = http.server.HTTPServer(("127.0.0.1", 0), _LogprobServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), "f2b", **{
            "teacher.mode": "remote", "teacher.url": f"http://127.0.0.1:{server.server_port}/v1",
            "train.steps": 1, "train.eval_tasks": 1}))
        trainer = Trainer(cfg, os.path.join(str(tmp_path), "remote"))
        try:
            trainer.train()
        finally:
            trainer.close()
    finally:
        server.shutdown()
    (m,) = read_metrics(os.path.join(str(tmp_path), "remote"))
    assert m["trained_tokens"] > 0 and m["kl_turn/0"] is not None and m["grad_norm"] > 0


def test_lora_and_checkpointing_train_only_the_adapters(tiny_pair, tmp_path):
    from tcod.models import load_models
    from tcod_kernels.hf import packed_hidden_states
    from tcod_kernels.packing import Trajectory, pack

    cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), "opd", **{
        "model.lora_r": 4, "model.lora_target_modules": "[q_proj, v_proj]", "model.gradient_checkpointing": "true"}))
    student, teacher, _, vocab = load_models(cfg)
    assert vocab == 416 and not any(p.requires_grad for p in teacher.parameters())
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = pack([Trajectory.from_chunks([("prompt", [5, 6, 7], 0), ("assistant", [8, 9], 0)])], 8)
    packed_hidden_states(student, batch).sum().backward()
    assert all(p.grad is not None for n, p in student.named_parameters() if p.requires_grad and "lora_B" in n)


def test_vllm_engine_gives_a_clear_error(tiny_pair, tmp_path):
    from tcod.trainer import Trainer

    cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), "opd", **{"rollout.engine": "vllm"}))
    with pytest.raises(ValueError, match="rollout.engine=vllm"):
        Trainer(cfg, os.path.join(str(tmp_path), "vllm"))


def test_update_without_samples_is_a_zero_step(tiny_pair, tmp_path):
    from tcod.curriculum import Window
    from tcod.rollout import Episode
    from tcod.trainer import Trainer

    cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), "opd"))
    trainer = Trainer(cfg, os.path.join(str(tmp_path), "empty"))
    try:
        before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        metrics = trainer.update(0, [Episode("coin/0", Window(0, 4), end="context")])
        assert metrics["trained_tokens"] == 0 and metrics["episodes"] == 1 and metrics["loss"] == 0
        for k, v in trainer.student.state_dict().items():
            assert torch.equal(v, before[k]), k
    finally:
        trainer.close()
