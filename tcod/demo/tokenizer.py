"""A small byte-level BPE tokenizer trained on an environment's own text, with a chat template.

Text is pre-split at newlines and at the punctuation that frames prompt fields and
actions (``. , : [ ] ' ( )``); BPE then merges within those phrases, up to
``max_token_length`` characters. Frequent phrases of the environment ("There is also a
coin", "move west") become single tokens, which keeps prompts short (a few hundred
tokens instead of about a thousand for word pieces) so a small model trains in minutes
on a CPU, and an action reads the same in the admissible list and after ``<action>``.
Byte-level pieces keep every string encodable and the decode exact
(``decode(encode(text)) == text``).

The chat template (``<|system|>``/``<|user|>``/``<|assistant|>`` headers, each message
closed by ``<|end|>``, which is also the EOS token) is rendered incrementally: adding a
message never re-renders earlier ones, which the rollout's chat-delta mode relies on.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, END = "<|pad|>", "<|end|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, END, SYSTEM, USER, ASSISTANT]
# Reply-format tags: whole tokens, but ordinary (not special) so that decoding with
# skip_special_tokens=True keeps them for the action parser.
TAG_TOKENS = ["<think>", "</think>", "<action>", "</action>"]
_SPLIT = Regex(r"\n+|[.,:\[\]'()]")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM
    + "{% elif message['role'] == 'user' %}" + USER
    + "{% else %}" + ASSISTANT + "{% endif %}"
    "{{ message['content'] }}" + END
    + "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000,
                    max_token_length: int = 24) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of at most ``vocab_size`` tokens learned from ``texts``."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(_SPLIT, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, max_token_length=max_token_length,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens(TAG_TOKENS)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained ``tokenizers.Tokenizer``."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD,
                                   additional_special_tokens=[SYSTEM, USER, ASSISTANT])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_turn(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, reply ids)`` for one assistant turn, exactly as a rollout builds them.

    The prompt is the chat template with the generation header; the reply is the response
    text followed by the end-of-turn token (the tokens the model must produce).
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    reply_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt_ids, reply_ids
