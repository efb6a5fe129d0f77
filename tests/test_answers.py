"""Answer lists in the generation engine (ofa_triton.generation.answers): the trie that
constrains a beam search, and the scoring of every answer (gen_type traverse), against
ModelScope's definitions and against the PyTorch module's full (uncached) decoder pass.

Tolerances: renormalized log-probabilities within 1e-6 of a log-softmax over the masked logits;
traverse scores within 2e-5 of the full decoder pass (sums of a few float32 log-probabilities
through different kernels).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ofa_triton.generation.answers import (AnswerTrie, TrieDecoding, renormalize,
                                           score_answers, softmax_choice)
from ofa_triton.generation.beam_search import GenerationSettings, SpecialTokens, beam_search

BOS, PAD, EOS, UNK = 0, 1, 2, 3
ANSWERS = [[10], [11, 12], [11, 13, 14], [15]]


def test_trie_is_modelscopes_get_next_layer():
    trie = AnswerTrie(ANSWERS, BOS, EOS)
    assert sorted(trie.next_tokens([BOS])) == [10, 11, 15]
    assert sorted(trie.next_tokens([BOS, 11])) == [12, 13]
    assert trie.next_tokens([BOS, 10]) == [EOS]
    assert trie.next_tokens([BOS, 11, 13, 14]) == [EOS]
    assert trie.next_tokens([BOS, 10, EOS]) == []          # nothing after an answer's eos
    assert trie.next_tokens([BOS, 99]) == [EOS]            # off the trie: only eos
    assert trie.next_tokens([BOS, 11, 12, 7, 8]) == [EOS]


def test_renormalize_is_a_log_softmax_over_the_allowed_logits():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0)) * 4
    allowed = [[4, 9, 10], [2], []]
    got = renormalize(torch.log_softmax(logits, -1), allowed)
    for row, tokens in enumerate(allowed):
        masked = torch.full_like(logits[row], -math.inf)
        masked[tokens] = logits[row, tokens]
        expected = torch.log_softmax(masked, -1) if tokens else masked
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(got[row]))
        assert torch.allclose(got[row][finite], expected[finite], atol=1e-6)
    assert got[1, 2] == 0.0      # a single allowed token is certain, exactly


class _RandomDecoder:
    """A StepDecoder whose log-probabilities are random, fixed per (row history, step)."""

    def __init__(self, rows: int, vocab: int):
        self.vocab, self.rows = vocab, list(range(rows))

    def step(self, tokens, at):
        out = []
        for row, token in zip(self.rows, tokens.tolist()):
            seed = hash((row, at, token)) % 2 ** 31
            out.append(torch.log_softmax(torch.randn(self.vocab, generator=torch.Generator()
                                                     .manual_seed(seed)) * 3, -1))
        return torch.stack(out)

    def reorder(self, rows):
        self.rows = [self.rows[i] for i in rows.tolist()]


def test_constrained_beam_search_only_finds_answers():
    trie = AnswerTrie(ANSWERS, BOS, EOS)
    settings = GenerationSettings(beam_size=3, max_len_b=6, no_repeat_ngram_size=0)
    hypotheses = beam_search(TrieDecoding(_RandomDecoder(4, 20), trie), 4, 5, settings,
                             SpecialTokens(BOS, PAD, EOS, UNK), 20)
    allowed = {tuple(a) + (EOS,) for a in ANSWERS}
    for sentence in hypotheses:
        assert len(sentence) == 3
        assert all(tuple(h.tokens) in allowed for h in sentence), sentence


def test_softmax_choice_takes_the_first_best_as_torch_argmax():
    scores = np.array([[-1.0, -0.5, -0.5], [-3.0, -2.0, -9.0]], dtype=np.float32)
    best, probability = softmax_choice(scores)
    assert best.tolist() == [1, 1]
    expected = torch.softmax(torch.from_numpy(scores), -1)
    assert np.allclose(probability, expected[[0, 1], [1, 1]].numpy(), atol=1e-7)


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory):
    from ofa_triton.export import load_checkpoint
    from ofa_triton.tiny_checkpoint import generate_tiny_checkpoint

    answers = ["red", "blue", "a dog", "a cat", "two dogs", "yes"]
    checkpoint = generate_tiny_checkpoint(tmp_path_factory.mktemp("vqa") / "c", image_size=64,
                                          task="visual-question-answering", answers=answers,
                                          gen_type="traverse")
    return load_checkpoint(checkpoint)


@pytest.mark.parametrize("prompt_type", ("none", "prev_output"))
def test_traverse_scores_equal_the_full_decoder_pass(vqa_model, prompt_type):
    """score_answers (the cached decoder step, teacher-forced, answers in chunks) against
    ModelScope's way: the whole decoder over prompt + answer at once, the trie's masks on the
    logits, log-softmax, the targets' log-probabilities summed."""
    from ofa_triton.modeling.generation import CachedDecoding
    from ofa_triton.text import decoder_prompt

    loaded = vqa_model
    model, text = loaded.model, loaded.text
    answer_ids = [text.answer_ids(a) for a in loaded.settings.task.answers]
    trie = AnswerTrie(answer_ids, text.bos_id, text.eos_id)
    source = text.source_ids(" what is in the picture?")
    prompt = decoder_prompt(source, prompt_type, text.bos_id)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    input_ids = torch.tensor([source, source])
    with torch.inference_mode():
        positions = len(prompt) + max(map(len, answer_ids)) + 1
        decoding = CachedDecoding(model, model.start(input_ids, pixels, positions))
        got = score_answers(decoding, [prompt, prompt], answer_ids, trie, text.pad_id)
        encoder_out, mask, pos = model.encode(input_ids, pixels)
        expected = np.zeros_like(got)
        for a, ids in enumerate(answer_ids):
            fed = torch.tensor([prompt + ids] * 2)
            hidden = model.decoder(fed, encoder_out, mask, pos)
            logits = model.decoder.output_projection(hidden).float()
            total = torch.zeros(2)
            for j, target in enumerate(ids + [text.eos_id]):
                allowed = trie.next_tokens([text.bos_id, *ids[:j]])
                row_logits = logits[:, len(prompt) - 1 + j]
                masked = torch.full_like(row_logits, -math.inf)
                masked[:, allowed] = row_logits[:, allowed]
                total += torch.log_softmax(masked, -1)[:, target]
            expected[:, a] = total.numpy()
    assert np.abs(got - expected).max() < 2e-5
    assert (got.argmax(1) == expected.argmax(1)).all()
