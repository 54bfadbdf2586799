"""Train a small sentencepiece tokenizer and save it as a transformers-loadable Llama tokenizer directory.

Why: tests and the synthetic default data need a real tokenizer without any download. With transformers 5.x the Llama
tokenizer is a `tokenizers` BPE model, so we train sentencepiece in BPE mode (the conversion is then exact) with
byte fallback (any character still encodes), identity normalization (newlines and repeated spaces survive a round trip)
and single-digit pieces (arithmetic stays learnable). ``LlamaTokenizer.from_pretrained`` on a directory holding only
``tokenizer.model`` converts it; ``save_pretrained`` then writes tokenizer.json, which ``AutoTokenizer`` loads offline.
One thread and an unshuffled, unsampled input make the model the same on every run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable

TEXT_FIELDS = ("instruction", "input", "context", "output", "response", "prompt", "completion", "definition", "text")
SPECIAL_PIECES = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
# The default prompt scaffolding, so its words get their own pieces even if the caller passes raw field text only.
TEMPLATE_LINES = ("Instruction: \nInput: \nResponse: ", "### Instruction:\n### Input:\n### Response:\n")


def read_texts(path: str) -> list[str]:
    """Every string field named in TEXT_FIELDS of every record of a .jsonl file (one sentence per field)."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            texts.extend(rec[k] for k in TEXT_FIELDS if isinstance(rec.get(k), str) and rec[k])
    return texts


def train_tokenizer(
    texts: Iterable[str] | str,
    out_dir: str,
    vocab_size: int = 512,
    byte_fallback: bool = True,
    extra_texts: Iterable[str] = TEMPLATE_LINES,
) -> str:
    """Train sentencepiece BPE on ``texts`` (strings, or a .jsonl path) and save a Llama tokenizer into ``out_dir``.

    Returns ``out_dir``. bos/eos/unk/pad are ids 1/2/0/3; bos is added to every encoding, eos is not (the data
    pipeline appends it to responses); padding is on the left, for generation. The spm model is kept as
    ``out_dir/spm.model`` for inspection.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer, LlamaTokenizer

    sentences = read_texts(texts) if isinstance(texts, str) else [t for t in texts if t]
    # The scaffolding appears once per sample in real prompts, so weight it like that in the piece statistics.
    n_samples = max(1, len(sentences) // 3)
    sentences = list(extra_texts) * n_samples + sentences
    if not sentences:
        raise ValueError("train_tokenizer: no text to train on")
    need = len(SPECIAL_PIECES) + len(set().union(*map(set, sentences))) + (256 if byte_fallback else 0) + 1
    if vocab_size < need:
        what = "4 specials + 256 bytes + the characters" if byte_fallback else "4 specials + the characters"
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} is too small; {what} need at least {need}")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        split_digits=True,
        byte_fallback=byte_fallback,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["bos"],
        eos_piece=SPECIAL_PIECES["eos"],
        pad_piece=SPECIAL_PIECES["pad"],
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=1 << 16,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as fh:
            fh.write(model.getvalue())
        tok = LlamaTokenizer.from_pretrained(
            tmp,
            pad_token=SPECIAL_PIECES["pad"],
            add_bos_token=True,
            add_eos_token=False,
            padding_side="left",
            local_files_only=True,
        )
        tok.save_pretrained(out_dir)
        shutil.copyfile(os.path.join(tmp, "tokenizer.model"), os.path.join(out_dir, "spm.model"))
    _check_roundtrip(AutoTokenizer.from_pretrained(out_dir, local_files_only=True), sentences[:50], out_dir)
    return out_dir


def _check_roundtrip(tok, sentences: list[str], out_dir: str) -> None:  # noqa: ANN001 - any HF tokenizer
    """Fail loudly if the saved tokenizer does not give back the text it was trained on."""
    for s in sentences:
        back = tok.decode(tok.encode(s, add_special_tokens=False))
        if back != s and back != s.lstrip(" "):
            raise RuntimeError(f"train_tokenizer: {out_dir} does not round-trip {s!r} (got {back!r})")
    if tok.pad_token_id is None or tok.bos_token_id is None or tok.eos_token_id is None:
        raise RuntimeError(f"train_tokenizer: {out_dir} lacks a pad, bos or eos token")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train a sentencepiece BPE tokenizer into a HF tokenizer directory.")
    p.add_argument("--data", required=True, help="a .jsonl file (its text fields are used)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--no-byte-fallback", action="store_true")
    args = p.parse_args(argv)
    print(train_tokenizer(args.data, args.out, args.vocab_size, byte_fallback=not args.no_byte_fallback))


if __name__ == "__main__":
    main()
