"""The generated bins -> a box in the original image's pixels, as OfaForAllTasks's
_visual_grounding_inference computes it, in float32 as its tensors are:

    bins = tokens[:-1] - len(tokenizer) + num_bins          # eos dropped
    box = bins / (num_bins - 1) * max_image_size
    box[0::2] /= patch_image_size / width;  box[1::2] /= patch_image_size / height

ModelScope neither sorts nor clamps the four numbers; neither does this.
"""

from __future__ import annotations

import numpy as np


def box_from_tokens(tokens: np.ndarray, image_size: np.ndarray, settings, eos_id: int
                    ) -> np.ndarray:
    """tokens [W] (the best hypothesis: eos, then pad after it), image_size [2] (width,
    height), ``settings`` the task's GroundingSettings -> float32 [4]: x0, y0, x1, y1."""
    generated = [int(t) for t in tokens]
    if eos_id in generated:
        generated = generated[:generated.index(eos_id)]
    if len(generated) != 4:
        raise ValueError(f"the model generated {len(generated)} tokens where a box needs 4 "
                           "(the checkpoint's beam_search must generate exactly 4: min_len and "
                           "max_len_b 4)")
    bins = np.array(generated, dtype=np.int64) - settings.first_bin_id
    box = bins.astype(np.float32) / np.float32(settings.num_bins - 1)
    box = box * np.float32(settings.max_image_size)
    width, height = (int(v) for v in image_size)
    box[0::2] /= np.float32(settings.patch_image_size / width)
    box[1::2] /= np.float32(settings.patch_image_size / height)
    return box.astype(np.float32)
