"""The encoder-decoders' tensor names, for Python code: the exported graphs' inputs and outputs
(onnx_export.py, generation/graphs.py), the preprocessing's outputs, and what the Triton
models pass between the steps.

The contract is the config.pbtxt templates under model_repository/, which spell the same
names; Python takes them from here. No imports: the Triton Python models import this too.
"""

from __future__ import annotations

# The source's token ids: int64 [batch, source length], bos ... eos, right-padded.
INPUT_IDS = "input_ids"
# The image: float32 [batch, 3, patch_image_size, patch_image_size], normalized.
PATCH_IMAGES = "patch_images"
# Visual entailment's decoder prompt: int64 [batch, prompt length], right-padded.
DECODER_INPUT_IDS = "decoder_input_ids"
# Visual entailment's output: float32 [batch, answers], log-softmax in answer-map order.
ANSWER_SCORES = "answer_scores"

# The entailment scorer (ofa_encoder_decoder, its ONNX graph and the PyTorch runtime).
SCORER_INPUTS = (INPUT_IDS, PATCH_IMAGES, DECODER_INPUT_IDS)
SCORER_OUTPUTS = (ANSWER_SCORES,)
# The generating tasks' generators (ofa_*_generator) and the generation engine's encoder graph.
GENERATOR_INPUTS = (INPUT_IDS, PATCH_IMAGES)
# The token-id inputs, whose trailing padding the runtimes may cut (runtime.trim_padding).
TOKEN_INPUTS = (INPUT_IDS, DECODER_INPUT_IDS)
