"""tcod.demo: a tiny build in a temporary cache is loadable, cached atomically and reused."""

import importlib.util
import json
import shutil

import pytest

from tcod.config import load_config
from tcod.demo import cache, get_recipe, load_demo_models, pipeline, prepare
from tcod.demo.data import expert_response, gold_turns
from tcod.demo.tokenizer import encode_turn, train_tokenizer

needs_twx = pytest.mark.skipif(
    shutil.which("java") is None or importlib.util.find_spec("textworld_express") is None,
    reason="TextWorldExpress needs the textworld-express package and a Java runtime")


def tiny_recipe():
    return get_recipe("textworld_express").replace(
        sft_tasks=6, teacher_steps=3, student_steps=2, batch_size=4, eval_tasks=2, max_steps=3, vocab_size=400)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_cache")
    models = load_demo_models(cache_dir=root, recipe=tiny_recipe(), progress=False)
    return root, models


@needs_twx
def test_build_is_loadable_and_shaped(built):
    root, models = built
    tokenizer, teacher, student = models  # unpacks as a tuple
    assert models.teacher is teacher and models.tokenizer is tokenizer
    assert teacher.config.num_hidden_layers == 2 and student.config.num_hidden_layers == 1
    assert teacher.config.vocab_size == student.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|end|>"
    folder = prepare(tiny_recipe(), cache_dir=root, progress=False)
    summary = json.loads((folder / cache.MARKER).read_text())
    assert set(summary["eval"]) == {"teacher", "student"}
    assert summary["eval"]["teacher"]["episodes"] == 2
    assert 0.0 <= summary["eval"]["teacher"]["success"] <= 1.0


@needs_twx
def test_second_call_loads_without_building(built, monkeypatch):
    root, _ = built

    def no_build(*args, **kwargs):
        raise AssertionError("the cached demo was rebuilt")

    monkeypatch.setattr(pipeline, "build", no_build)
    models = load_demo_models(cache_dir=root, recipe=tiny_recipe(), progress=False)
    assert models.student.config.num_hidden_layers == 1


@needs_twx
def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken_build(recipe, out, **kwargs):
        (out / "teacher").mkdir()
        (out / "teacher" / "half-written").write_text("x")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pipeline, "build", broken_build)
    recipe = tiny_recipe()
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare(recipe, cache_dir=tmp_path, progress=False)
    folder = pipeline.demo_folder(recipe, cache_dir=tmp_path)
    assert not folder.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TCOD_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path / "demo"
    assert cache.cache_root(tmp_path / "x") == tmp_path / "x"
    a = pipeline.demo_folder(tiny_recipe())
    b = pipeline.demo_folder(tiny_recipe().replace(teacher_steps=4))
    assert a != b and a.parent == tmp_path / "demo"


@needs_twx
def test_tokenizer_round_trips_env_text_and_chat_deltas():
    from tcod.rollout import ChatFormat

    recipe = tiny_recipe()
    env = pipeline.make_env(recipe, 4)
    try:
        turns = [t for task in env.tasks("train")[:3] for t in gold_turns(env, task, env_name=recipe.env_name)]
        dev_obs = env.reset(env.tasks("dev")[0])
    finally:
        env.close()
    texts = [m["content"] for t in turns for m in t.messages] + [t.response for t in turns]
    tok = train_tokenizer(texts, vocab_size=400)
    for text in texts + [dev_obs.text, "unseen: naïve café ✓ 42"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt_ids, reply_ids = encode_turn(tok, turns[0].messages, turns[0].response)
    assert reply_ids[-1] == tok.eos_token_id
    assert tok.decode(reply_ids, skip_special_tokens=True) == turns[0].response
    assert turns[0].response == expert_response("look around")
    assert tok.decode(prompt_ids).endswith("<|assistant|>")
    chat = ChatFormat(tok)  # the trainer's rollout accepts the template
    assert chat.close == [tok.eos_token_id]
    assert chat.first(turns[0].messages[-1]["content"]) == prompt_ids


def test_default_preset_matches_the_demo_recipe():
    cfg = load_config("default")
    recipe = get_recipe(cfg.env.name)
    assert cfg.model.teacher == "demo:teacher" and cfg.model.student == "demo:student"
    assert cfg.curriculum.method == "f2b"
    for key, value in recipe.env_options.items():
        assert cfg.env.options[key] == value
    assert cfg.env.max_steps == recipe.max_steps and cfg.env.history == recipe.history
