"""The text side every OFA task shares, identical to ModelScope's preprocessors.

``modelscope/preprocessors/ofa/base.py`` (pre_caption, tokenize_text) and the decoder prompt of
the task preprocessors. Each task builds its own prompt (tasks/<task>/) and encodes it here.
ModelScope runs the slow ``BartTokenizer``; this uses the Rust ``tokenizers`` library
configured the same way (byte-level BPE, BART's special tokens, then 8192 ``<code_*>`` and 1000
``<bin_*>`` added tokens), built once per process. The goldens tests pin the equality token
for token.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

NUM_IMAGE_CODES = 8192
NUM_BINS = 1000

_RUNS_OF_WHITESPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int | None = None) -> str:
    """ModelScope's OfaBasePreprocessor.pre_caption, step for step."""
    return _clean(caption, max_words, person=True)


def pre_question(question: str, max_words: int | None = None) -> str:
    """ModelScope's OfaBasePreprocessor.pre_question: pre_caption without its <person> rule."""
    return _clean(question, max_words, person=False)


def _clean(caption: str, max_words: int | None, person: bool) -> str:
    caption = caption.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    if person:
        caption = caption.replace("<person>", "person")
    caption = _RUNS_OF_WHITESPACE.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if max_words is not None and len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def build_bpe_tokenizer(vocab_file: str | Path, merges_file: str | Path) -> Tokenizer:
    """BART's byte-level BPE plus OFA's added tokens, as ``OFATokenizer`` builds it."""
    tokenizer = Tokenizer(models.BPE.from_file(str(vocab_file), str(merges_file),
                                               unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # BartTokenizer's special tokens; <mask> eats the space before it (lstrip), like BART's.
    tokenizer.add_special_tokens([
        AddedToken("<s>", lstrip=False, rstrip=False, normalized=False),
        AddedToken("<pad>", lstrip=False, rstrip=False, normalized=False),
        AddedToken("</s>", lstrip=False, rstrip=False, normalized=False),
        AddedToken("<unk>", lstrip=False, rstrip=False, normalized=False),
        AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False),
    ])
    tokenizer.add_tokens([AddedToken(f"<code_{i}>", lstrip=False, rstrip=False, normalized=True)
                          for i in range(NUM_IMAGE_CODES)]
                         + [AddedToken(f"<bin_{i}>", lstrip=False, rstrip=False, normalized=True)
                            for i in range(NUM_BINS)])
    return tokenizer


def decoder_prompt(source_ids: list[int], prompt_type: str, bos_id: int) -> list[int]:
    """The decoder's prompt, as ModelScope's task preprocessors build it: ``none``: [bos];
    ``src``: the source; ``prev_output``: the source without its eos."""
    if prompt_type == "none":
        return [bos_id]
    if prompt_type == "src":
        return list(source_ids)
    return list(source_ids[:-1])


class OfaTextEncoder:
    """Token ids for one checkpoint. Build once; thread-safe to call."""

    def __init__(self, vocab_file: str | Path, merges_file: str | Path, *, max_src_length: int,
                 prompt_type: str):
        if prompt_type not in ("none", "src", "prev_output"):
            raise ValueError(f"prompt_type {prompt_type!r} is not supported (ModelScope's OFA "
                             "preprocessors take 'none', 'src' and 'prev_output')")
        self.tokenizer = build_bpe_tokenizer(vocab_file, merges_file)
        self.max_src_length = max_src_length
        self.prompt_type = prompt_type
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.bos_id, self.pad_id, self.eos_id = vocab["<s>"], vocab["<pad>"], vocab["</s>"]
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._special_ids = {vocab[token] for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
        self._first_added_id = vocab["<code_0>"]

    def bpe(self, text: str) -> list[int]:
        """BPE ids without special tokens, truncated to max_src_length."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids[:self.max_src_length]

    def source_ids(self, prompt: str) -> list[int]:
        """Encoder input of a task's prompt: bos + BPE(prompt)[:max_src_length] + eos."""
        return [self.bos_id, *self.bpe(prompt), self.eos_id]

    def decoder_prompt_ids(self, source_ids: list[int]) -> list[int]:
        return decoder_prompt(source_ids, self.prompt_type, self.bos_id)

    def answer_ids(self, answer: str) -> list[int]:
        """An answer of an answer list as ModelScope's build_trie tokenizes it: BPE of
        ' ' + answer, no special tokens, not truncated."""
        return self.tokenizer.encode(" " + answer, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Generated ids -> text, as ModelScope's slow BartTokenizer decodes them
        (``batch_decode(skip_special_tokens=True)``): special tokens dropped, runs of BPE tokens
        decoded from bytes (invalid UTF-8 replaced), each added token (<code_*>, <bin_*>) as
        its own piece, the pieces joined with spaces, no clean-up of spaces."""
        pieces, run = [], []
        for token in ids:
            if token in self._special_ids:
                continue
            if token >= self._first_added_id:
                if run:
                    text = self.tokenizer.decode(run, skip_special_tokens=False)
                    if text:
                        pieces.append(text)
                    run = []
                pieces.append(self.tokenizer.id_to_token(token))
            else:
                run.append(token)
        if run:
            pieces.append(self.tokenizer.decode(run, skip_special_tokens=False))
        return " ".join(pieces)

    def answer_token_ids(self, answers: list[str]) -> list[int]:
        """The single BPE token of ' answer' for each answer; multi-token answers are refused
        because the exported scorer reads one decoder step."""
        ids = []
        for answer in answers:
            tokens = self.tokenizer.encode(" " + answer, add_special_tokens=False).ids
            if len(tokens) != 1:
                raise ValueError(f"answer {answer!r} is {len(tokens)} BPE tokens in this "
                                 "vocabulary; the exported scorer needs single-token answers")
            ids.append(tokens[0])
        return ids
