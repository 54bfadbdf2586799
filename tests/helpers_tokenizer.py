"""A tiny, offline, Llama-style tokenizer for tests (about 2 s to build).

A SentencePiece BPE model (vocab 200) is trained on a fixed synthetic corpus, written as tokenizer.model and
converted by transformers' LlamaTokenizer.from_pretrained. It adds BOS (id 1) like Llama, has EOS (id 2), no pad
token unless asked, and a small chat template. The saved directory loads with AutoTokenizer.from_pretrained, so it
can serve as model.tokenizer in a test config.
"""

from __future__ import annotations

import os
import random
import string
from pathlib import Path
from typing import Any

VOCAB_SIZE = 200
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0

# Writes BOS itself (like Llama chat templates), so the pipeline must not add a second one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a an of to and in is it you that for on with as are this be at by from or have not what how why when "
    "which who write list give name explain describe answer question instruction input response context prompt "
    "user assistant system cat dog tea water red green blue one two three four five hello world paris france "
    "capital city river make made good best first last number color animal food book story"
).split()


def _corpus(lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [string.printable.strip()]  # every printable ASCII character, so nothing maps to <unk>
    for _ in range(lines):
        out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!:"))
    return out


def build_tiny_tokenizer(
    out_dir: str | os.PathLike[str], chat_template: bool = True, pad: bool = False, corpus_seed: int = 0
) -> Any:
    """Train, convert and save the tiny tokenizer into out_dir; returns the loaded transformers tokenizer.

    Another `corpus_seed` gives a tokenizer of the same size whose merges, and so ids, differ.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(_corpus(seed=corpus_seed)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "tokenizer"),
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        user_defined_symbols=["\n"],  # chat templates and prompts rely on newlines; SentencePiece drops them otherwise
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
    )
    tok = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True, add_eos_token=False)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    if pad:
        tok.pad_token = tok.unk_token
    tok.save_pretrained(str(out))
    return tok


def build_byte_bpe_tokenizer(out_dir: str | os.PathLike[str], vocab_size: int = 300) -> Any:
    """A GPT-2-style byte-level BPE tokenizer (one <|endoftext|> as bos, eos and unk), trained offline and saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[special], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special, unk_token=special)
    fast.save_pretrained(str(out_dir))
    return fast
