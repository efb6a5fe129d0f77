"""The generator a generating task's Triton model runs (``ofa_caption_generator``,
``ofa_vqa_generator``, ``ofa_grounding_generator``): the engine on the instance's device, one
beam search per dynamic batch (every hypothesis of every request through one decoder step per
position; requests leave the batch as they finish), or with ``gen_type: traverse`` every
answer of the checkpoint's list scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..modeling.generation import CachedDecoding, OfaGenerationModel
from ..runtime import RuntimeRecord, trim_padding
from ..settings import ServingSettings
from ..tensor_names import INPUT_IDS, PATCH_IMAGES
from ..text import decoder_prompt
from ..torch_runtime import instance_device, load_weights, read_architecture
from .answers import AnswerTrie, score_answers, softmax_choice
from .beam_search import SpecialTokens, beam_search
from .search import best_tokens


class Generator:
    """``generator({"input_ids": ..., "patch_images": ...})`` -> {"tokens", "score",
    "answer_index"} per request, in the runtime the version was exported for: the PyTorch
    generation module on the instance's device, or the encoder and decoder-step graphs in
    onnxruntime on the CPU. ``answer_index`` is -1 unless answers are scored (traverse)."""

    def __init__(self, version_dir: Path, *, instance_kind: str = "CPU", device_id: int = 0,
                 threads: int = 0, device: str = ""):
        version_dir = Path(version_dir)
        self.runtime = RuntimeRecord.read(version_dir).runtime
        self.settings = ServingSettings.read(version_dir)
        task = self.settings.task
        self.task = task
        self.generation = task.generation
        self.special = SpecialTokens(bos=self.settings.bos_token_id,
                                     pad=self.settings.pad_token_id,
                                     eos=self.settings.eos_token_id, unk=task.unk_token_id)
        self.trie = (AnswerTrie(task.answer_ids, self.special.bos, self.special.eos)
                     if task.answer_ids else None)
        if self.runtime == "torch":
            self.device = instance_device(instance_kind, device_id, threads, device)
            self.model = load_weights(OfaGenerationModel(read_architecture(version_dir)),
                                      version_dir, self.device)
            self.vocab_size = self.model.arch.vocab_size
        else:
            if instance_kind.upper() == "GPU" or device.startswith("cuda"):
                raise RuntimeError("the generation engine's onnxruntime graphs run on the CPU; "
                                   "export --runtime torch for a GPU")
            from .graphs import open_sessions

            self.device = torch.device("cpu")
            self.sessions = open_sessions(version_dir, threads)
            # torch runs only the beam search's small tensor ops here. With its default
            # threads, OpenMP workers busy-wait between those ops and take the cores from
            # onnxruntime's: measured on 2 cores, one grounding request 282 ms, 155 ms with
            # one torch thread (the process is a Triton stub of its own).
            torch.set_num_threads(1)
            self.vocab_size = int(self.sessions[1].get_outputs()[0].shape[1])

    @property
    def description(self) -> str:
        g = self.generation
        where = f"torch {torch.__version__}" if self.runtime == "torch" else "onnxruntime"
        how = (f"{len(self.task.answers)} answers scored" if self.task.traverse else
               f"beam {g.beam_size}, max_len_b {g.max_len_b}"
               + (f", {len(self.task.answers)} answers as a trie" if self.trie else ""))
        return f"{where} on {self.device}, {how}"

    def _decoding(self, batch: dict[str, np.ndarray], positions: int):
        """The encoder run once over the batch; a StepDecoder ready for ``positions`` decoder
        positions (the ONNX graphs: the export's)."""
        if self.runtime == "torch":
            input_ids = torch.from_numpy(batch[INPUT_IDS]).to(self.device)
            pixels = torch.from_numpy(batch[PATCH_IMAGES]).to(self.device)
            with torch.inference_mode():
                cache = self.model.start(input_ids, pixels, positions)
            return CachedDecoding(self.model, cache, self.generation.temperature,
                                  self.generation.allowed)
        from .graphs import OnnxDecoding

        return OnnxDecoding(*self.sessions, batch[INPUT_IDS], batch[PATCH_IMAGES])

    def _groups(self, batch: dict[str, np.ndarray], key) -> list[tuple[np.ndarray, dict]]:
        """The batch split into groups of requests with the same ``key(source ids)``, each
        trimmed of the padding all its rows share."""
        sources = [row[row != self.special.pad].tolist() for row in batch[INPUT_IDS]]
        keys = [key(source) for source in sources]
        groups = []
        for value in dict.fromkeys(keys):
            rows = np.array([i for i, k in enumerate(keys) if k == value])
            part = {name: tensor[rows] for name, tensor in batch.items()}
            groups.append((rows, trim_padding(part, self.special.pad)))
        return groups

    def _search(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        source_length = batch[INPUT_IDS].shape[1]
        positions = self.generation.max_len(source_length) + 1
        with torch.inference_mode():
            decoding = self._decoding(batch, positions)
            if self.trie is not None:
                decoding = self.trie.decoding(decoding)
            hypotheses = beam_search(decoding, len(batch[INPUT_IDS]), source_length,
                                     self.generation, self.special, self.vocab_size,
                                     device=self.device)
        return best_tokens(hypotheses, self.task.output_length, self.special.pad)

    def _score(self, batch: dict[str, np.ndarray], prompts: list[list[int]]
               ) -> tuple[np.ndarray, np.ndarray]:
        positions = len(prompts[0]) + max(len(ids) for ids in self.task.answer_ids) + 1
        with torch.inference_mode():
            scores = score_answers(self._decoding(batch, positions), prompts,
                                   self.task.answer_ids, self.trie, self.special.pad)
        return softmax_choice(scores)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch[INPUT_IDS])
        tokens = np.full((rows, self.task.output_length), self.special.pad, dtype=np.int64)
        score = np.zeros(rows, dtype=np.float32)
        answer_index = np.full(rows, -1, dtype=np.int64)
        if self.task.traverse:
            # Requests whose decoder prompts have one length are scored together.
            prompt = lambda source: decoder_prompt(source, self.task.prompt_type,  # noqa: E731
                                                   self.special.bos)
            for group, part in self._groups(batch, lambda source: len(prompt(source))):
                prompts = [prompt(row[row != self.special.pad].tolist())
                           for row in part[INPUT_IDS]]
                answer_index[group], score[group] = self._score(part, prompts)
        elif self.generation.max_len_a:
            # ModelScope's maximum length grows with each request's own source length.
            for group, part in self._groups(batch, len):
                tokens[group], score[group] = self._search(part)
        else:
            tokens[:], score[:] = self._search(trim_padding(batch, self.special.pad))
        return {"tokens": tokens, "score": score[:, None], "answer_index": answer_index[:, None]}
