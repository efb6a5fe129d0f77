"""A tiny OFA checkpoint in ModelScope layout, made from a seed: visual entailment (the
default), image captioning, visual question answering or visual grounding.

For tests and for the service's built-in default model. It needs no network: the vocabulary is
a byte-level BPE trained here on a small built-in corpus, and the weights are random draws from
numpy's PCG64 generator (reproducible across machines). The answers ` yes`, ` no` and ` maybe`
are single tokens, as in OFA's real vocabulary. The weights are random: answers show that the
pipeline works, not what the image shows.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np

from .tasks.visual_entailment.labels import DEFAULT_ANSWER_MAP
from .modeling import OfaArchitecture, OfaVisualEntailmentModel
from .text import NUM_BINS, NUM_IMAGE_CODES

DEFAULT_SEED = 20240607
DEFAULT_IMAGE_SIZE = 64
NUM_MERGES = 600

# OFA-tiny's dimensions (ofa-tiny: d256, 4+4 layers, 4 heads, ResNet50).
TINY_ARCHITECTURE = dict(d_model=256, encoder_layers=4, decoder_layers=4,
                         encoder_attention_heads=4, decoder_attention_heads=4,
                         encoder_ffn_dim=1024, decoder_ffn_dim=1024, resnet_type="resnet50")

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"

_CORPUS = """
a man is riding a bicycle down the street . two dogs are playing in the snow .
a woman in a red dress is dancing on a stage . the children are sitting at a table eating lunch .
a group of people are standing outside a building . a cat is sleeping on the couch .
a boy jumps into the water at the beach . the sky is blue and there are no clouds .
an old man is reading a newspaper on a bench in the park . people are walking in the rain .
a girl is holding an umbrella . the car is parked next to a tree . a black and white photo .
does the image describe the text ? can image and text imply the hypothesis ? yes no maybe
yes yes yes no no no maybe maybe maybe . the answer is yes . the answer is no . maybe not .
someone is cooking dinner in the kitchen . a dog runs across the green grass with a ball .
the players are wearing blue shirts and playing soccer on a field . a person is climbing a rock .
musicians play guitars and drums at a concert . a baby is smiling at the camera .
two men are talking on the sidewalk near a shop . a horse is standing in a field of flowers .
""".split()


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/BART's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def train_byte_level_bpe(words: list[str], num_merges: int,
                         forced_words: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """A plain BPE trainer with deterministic tie-breaking. ``forced_words`` (already in byte
    characters, e.g. 'Ġyes') get their merges first, so each is one token."""
    merges: list[tuple[str, str]] = []
    for word in forced_words:
        pieces = list(word)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    counts = collections.Counter(words)
    splits = {w: list(w) for w in counts}

    def apply(pair: tuple[str, str]) -> None:
        for w, pieces in splits.items():
            i, out = 0, []
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                    out.append(pieces[i] + pieces[i + 1])
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            splits[w] = out

    for pair in merges:
        apply(pair)
    while len(merges) < num_merges:
        pairs: collections.Counter = collections.Counter()
        for w, pieces in splits.items():
            for pair in zip(pieces, pieces[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        apply(best)
    symbols = sorted(_byte_to_unicode().values())
    seen = set(symbols)
    for a, b in merges:
        if a + b not in seen:
            symbols.append(a + b)
            seen.add(a + b)
    return symbols, merges


def _write_vocabulary(directory: Path) -> int:
    table = _byte_to_unicode()

    def to_byte_chars(word: str) -> str:
        return "".join(table[b] for b in word.encode("utf-8"))

    words = [to_byte_chars(" " + w) for w in _CORPUS] + [to_byte_chars(w) for w in _CORPUS]
    forced = tuple(to_byte_chars(" " + answer) for answer in DEFAULT_ANSWER_MAP)
    symbols, merges = train_byte_level_bpe(words, NUM_MERGES, forced)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *symbols, MASK_TOKEN])}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return len(vocab)


def _random_state_dict(model: OfaVisualEntailmentModel, seed: int) -> dict[str, "object"]:
    """Scaled random draws per tensor kind, so activations neither vanish nor explode and the
    answers differ between inputs."""
    import torch

    rng = np.random.Generator(np.random.PCG64(seed))
    state = {}
    shared: dict[int, object] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in shared:       # tied weights: one draw
            state[name] = shared[tensor.data_ptr()]
            continue
        shape = tuple(tensor.shape)
        leaf = name.rsplit(".", 1)[-1]
        if not tensor.is_floating_point():
            value = tensor.clone()            # bucket buffers, num_batches_tracked
        elif "rel_pos_table" in name:
            value = rng.normal(0.0, 0.5, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif ".bn3." in name and leaf == "weight":
            value = rng.normal(0.3, 0.05, shape)      # keep the residual stream bounded
        elif leaf == "c_attn" or (len(shape) == 1 and leaf == "weight"):
            value = rng.normal(1.0, 0.1, shape)       # layer/batch norm scales, head scales
        elif len(shape) == 1:
            value = rng.normal(0.0, 0.05, shape)      # biases
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            value = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)
        else:                                         # linear [out, in], embedding [n, dim]
            value = rng.normal(0.0, shape[1] ** -0.5, shape)
        value = torch.as_tensor(np.asarray(value), dtype=tensor.dtype)
        if name.endswith("embed_tokens.weight"):
            value[model.arch.pad_token_id] = 0
        state[name] = value
        shared[tensor.data_ptr()] = value
    return state


def _shape_for_generation(state: dict, model: OfaVisualEntailmentModel, vocab: dict[str, int],
                          eos_id: int) -> None:
    """Make random weights generate: with plain random draws every image gets the same,
    repetitive caption (attention nearly uniform, the decoder's input token dominating its
    output through the tied embedding). Measured with greedy decoding on the golden images:
    - q and k projections x3: attention that picks positions;
    - the decoder's cross-attention (its NormFormer mid layer norm) x3: captions that depend
      on the image;
    - the decoder's embedding layer norm x0.1: the input token no longer repeats itself;
    - embedding rows x0.05 for everything but whole words (BPE tokens with a leading space)
      and eos: no <code_*>/<bin_*>, special tokens or word pieces, so captions are words;
    - eos along the final layer norm's bias (a component of every output): some captions end
      before the maximum length, at different steps.
    """
    import torch

    with torch.no_grad():
        _sharpen_attention(state)
        embedding = state["encoder.embed_tokens.weight"].clone()
        words = {index for token, index in vocab.items() if token.startswith("\u0120")}
        others = [i for i in range(embedding.shape[0]) if i not in words and i != eos_id]
        embedding[others] *= 0.05
        bias = state.get("decoder.layer_norm.bias")
        if bias is not None:
            embedding[eos_id] = 1.5 * (256 / model.arch.d_model) ** 0.5 * bias / bias.norm()
        _set_token_embedding(state, model, embedding)


def _sharpen_attention(state: dict, embedding_norm_scale: float = 0.1) -> None:
    """q/k projections x3, the decoder's cross-attention mid layer norm x3, the decoder's
    embedding layer norm x``embedding_norm_scale`` (see ``_shape_for_generation``)."""
    for name in state:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            state[name] = state[name] * 3.0
        elif name.startswith("decoder.") and "cross_attn_mid_layer_norm" in name:
            state[name] = state[name] * 3.0
        elif name.startswith("decoder.layernorm_embedding.") and embedding_norm_scale != 1.0:
            state[name] = state[name] * embedding_norm_scale


def _set_token_embedding(state: dict, model: OfaVisualEntailmentModel, embedding) -> None:
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                 "decoder.output_projection.weight"):
        if name in state and (name != "decoder.output_projection.weight"
                              or model.arch.share_decoder_input_output_embed):
            state[name] = embedding


GROUNDING_BIN_SCALE = 16.0


def _shape_for_grounding(state: dict, model: OfaVisualEntailmentModel, num_bins: int) -> None:
    """Make random weights ground. ModelScope's grounding beam search may pick only <bin_*>
    tokens and the four special tokens (its ``constraint_range`` masks the ids from 4 to the
    first bin, not the specials) for four steps, then eos. With the captions' shaping nearly
    every box is made of the same few bins: the decoder's hidden state varies little between
    inputs next to its common part, and the bins whose random rows align with that common
    part win for every input. Measured with ModelScope's pipeline on the 36 golden cases of
    each checkpoint of tests/golden/cases.py GROUNDING_CHECKPOINTS (34 and 30 distinct bin
    quadruples of 36, 33 bins used; best and second beams at least 0.08 apart; no box changes
    when the pixels get N(0, 1e-4) noise):
    - q and k projections x3 and the decoder's cross-attention x3, as for captions: attention
      that picks positions, so the hidden state depends on the image and the text (x6 makes
      more boxes distinct but chaotic: 1e-5 of pixel noise changes some);
    - the decoder's embedding layer norm as drawn (x0.1 for captions): the previous bin
      steers the next one, instead of one bin repeating in all four coordinates;
    - the four special tokens' embedding rows x0.05: bos and unk never outscore the bins
      (ModelScope's box arithmetic would turn them into negative coordinates), and eos ends
      nothing early (min_len forbids it until the last step anyway). Words and word pieces
      keep their rows, unlike captions: shrunk rows vanish under the encoder's embedding
      layer norm (its eps dominates them), and then every text reads alike;
    - the <bin_*> rows (the output projection too) x16 (``GROUNDING_BIN_SCALE``): bin logits
      spread over several nats, so the best bins and beams are not near-ties; then made
      orthogonal to the decoder's final layer norm bias, a component of every hidden state
      that otherwise favours the same few bins for every input.
    """
    import torch

    with torch.no_grad():
        _sharpen_attention(state, embedding_norm_scale=1.0)
        embedding = state["encoder.embed_tokens.weight"].clone()
        embedding[:4] *= 0.05
        first_bin = embedding.shape[0] - num_bins
        bins = embedding[first_bin:] * GROUNDING_BIN_SCALE
        bias = state.get("decoder.layer_norm.bias")
        if bias is not None:
            direction = bias / bias.norm()
            bins = bins - (bins @ direction)[:, None] * direction[None, :]
        embedding[first_bin:] = bins
        _set_token_embedding(state, model, embedding)


def state_dict_digest(state: dict) -> str:
    """sha256 over names and values: stable across torch versions, unlike the .bin bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(state[name].detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


TASK_PROMPT_TYPES = {"visual-entailment": "prev_output", "image-captioning": "prev_output",
                     "visual-question-answering": "none", "visual-grounding": "none"}
GROUNDING_MAX_IMAGE_SIZE = 512   # ModelScope's default for model.max_image_size


def _or(value, default):
    return default if value is None else value


def _check_answers(answers: list[str] | None, gen_type: str, beam: dict) -> None:
    if answers is None:
        if gen_type == "traverse":
            raise ValueError("gen_type 'traverse' needs an answer list (answers=[...])")
        return
    if not answers or len(set(answers)) != len(answers) or not all(
            isinstance(a, str) and a.strip() for a in answers):
        raise ValueError("answers must be distinct non-empty strings")
    if gen_type == "generation" and beam["beam_size"] > len(answers):
        # OfaForAllTasks.inference asserts beam_size <= len(answer2label) for this setting.
        raise ValueError(f"beam_size {beam['beam_size']} exceeds the {len(answers)} answers: "
                         "ModelScope refuses trie-constrained generation with fewer answers "
                         "than beams")


def generate_tiny_checkpoint(directory: str | Path, *, seed: int = DEFAULT_SEED,
                             image_size: int = DEFAULT_IMAGE_SIZE, max_src_length: int = 80,
                             prompt_type: str | None = None, imagenet_mean_std: bool = False,
                             architecture_overrides: dict | None = None,
                             task: str = "visual-entailment",
                             beam_search: dict | None = None,
                             gen_type: str | None = None,
                             answers: list[str] | None = None,
                             max_image_size: int | None = None) -> Path:
    """Write a complete ModelScope-layout checkpoint into ``directory`` and return it.
    The defaults are the released SNLI-VE settings with OFA-tiny's dimensions at a small image
    size; the keyword arguments make the variants that the fidelity tests also cover.
    ``task="image-captioning"`` writes a captioning checkpoint (configuration.json as
    ModelScope's released ones, ``beam_search`` overriding its generator settings) whose
    weights are shaped to generate word captions (``_shape_for_generation``).

    ``task="visual-question-answering"`` (as damo/ofa_visual-question-answering_pretrain_*_en):
    ``gen_type`` "generation" (default) or "traverse"; ``answers`` writes answer2label.json
    ({answer: index}, in list order) and sets model.answer2label: with "generation" ModelScope
    then constrains the beam search to the answers (a trie over their BPE tokens), with
    "traverse" (which needs ``answers``) it scores every answer; without ``answers`` the
    answer is free generation. ``beam_search`` overrides {beam_size 5, max_len_b 16,
    no_repeat_ngram_size 3}. Weights shaped as for captions: answers are words.

    ``task="visual-grounding"`` (as damo/ofa_visual-grounding_refcoco_*_en): ``beam_search``
    overrides {beam_size 5, max_len_b 4, min_len 4, no_repeat_ngram_size 3, constraint_range
    "<first bin id>,<first bin id + 1000>"}; weights shaped by ``_shape_for_grounding``.

    ``prompt_type``: None means the task's usual one ("prev_output" for entailment and
    captioning, "none" for question answering and grounding). ``max_image_size``: None means
    512 for entailment and grounding (ModelScope's default; grounding scales its boxes by it),
    ``image_size`` for captioning and question answering (as their released
    configurations)."""
    import torch

    from .text import OfaTextEncoder

    if task not in TASK_PROMPT_TYPES:
        raise ValueError(f"no tiny checkpoint for task {task!r}")
    if task != "visual-question-answering" and (gen_type is not None or answers is not None):
        raise ValueError("gen_type and answers are settings of visual-question-answering")
    if prompt_type is None:
        prompt_type = TASK_PROMPT_TYPES[task]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base_vocab = _write_vocabulary(directory)
    text = OfaTextEncoder(directory / "vocab.json", directory / "merges.txt",
                          max_src_length=max_src_length, prompt_type=prompt_type)
    assert text.vocab_size == base_vocab + NUM_IMAGE_CODES + NUM_BINS
    arch = OfaArchitecture(**{**TINY_ARCHITECTURE, **(architecture_overrides or {}),
                              "vocab_size": text.vocab_size})
    model = OfaVisualEntailmentModel(arch, text.answer_token_ids(list(DEFAULT_ANSWER_MAP)))
    state = _random_state_dict(model, seed)
    if task in ("image-captioning", "visual-question-answering"):
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        _shape_for_generation(state, model, vocab, text.eos_id)
    elif task == "visual-grounding":
        _shape_for_grounding(state, model, NUM_BINS)
    torch.save(state, directory / "pytorch_model.bin")

    config = {"architectures": ["OFAModel"], "model_type": "ofa", **arch.to_dict()}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    outputs = {"visual-entailment": "answers", "image-captioning": "captions",
               "visual-question-answering": "answers", "visual-grounding": "boxes"}[task]
    generator = {"seed": seed, "note": "random weights from ofa_triton.tiny_checkpoint; "
                 f"{outputs} carry no meaning"}
    model_settings = {"type": "ofa", "prompt_type": prompt_type, "patch_image_size": image_size,
                      "imagenet_default_mean_and_std": imagenet_mean_std,
                      "max_src_length": max_src_length, "language": "en", "seed": 7}
    if task == "visual-entailment":
        (directory / "answer2label.json").write_text(json.dumps(DEFAULT_ANSWER_MAP) + "\n")
        model_settings.update(gen_type="traverse", answer2label="answer2label.json",
                              max_image_size=_or(max_image_size, 512))
    elif task == "image-captioning":
        # As ModelScope's damo/ofa_image-caption_coco_*_en configurations.
        model_settings.update(gen_type="generation", max_image_size=_or(max_image_size, image_size),
                              beam_search={"beam_size": 5, "max_len_b": 16,
                                           "no_repeat_ngram_size": 3, **(beam_search or {})})
    elif task == "visual-question-answering":
        gen_type = gen_type or "generation"
        if gen_type not in ("generation", "traverse"):
            raise ValueError(f"gen_type {gen_type!r}: ModelScope takes 'generation' or 'traverse'")
        beam = {"beam_size": 5, "max_len_b": 16, "no_repeat_ngram_size": 3, **(beam_search or {})}
        _check_answers(answers, gen_type, beam)
        model_settings.update(gen_type=gen_type, max_image_size=_or(max_image_size, image_size),
                              beam_search=beam)
        if answers is not None:
            (directory / "answer2label.json").write_text(json.dumps(
                {answer: index for index, answer in enumerate(answers)}, ensure_ascii=False)
                + "\n", encoding="utf-8")
            model_settings["answer2label"] = "answer2label.json"
    else:
        # As ModelScope's damo/ofa_visual-grounding_refcoco_*_en configurations.
        first_bin = text.vocab_size - NUM_BINS
        model_settings.update(
            gen_type="generation", max_image_size=_or(max_image_size, GROUNDING_MAX_IMAGE_SIZE),
            beam_search={"beam_size": 5, "max_len_b": 4, "min_len": 4,
                         "no_repeat_ngram_size": 3,
                         "constraint_range": f"{first_bin},{first_bin + NUM_BINS}",
                         **(beam_search or {})})
    configuration = {"framework": "pytorch", "task": task, "pipeline": {"type": task},
                     "model": model_settings, "generator": generator}
    (directory / "configuration.json").write_text(json.dumps(configuration, indent=2) + "\n")
    (directory / "GENERATED.json").write_text(json.dumps(
        {"seed": seed, "state_dict_sha256": state_dict_digest(state)}, indent=2) + "\n")
    return directory
