"""Network inference on whole images of any size."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embedseg.data.transforms import image_to_tensor


class Predictor:
    """Runs the network on one uint8 RGB image [H, W, 3] and returns the grouper inputs:

        {"embedding": float32 [D, H, W], "seediness": float32 [H, W],
         "semantic": float32 [C+1, H, W] softmax probabilities}

    The image is padded (reflect) to a multiple of `pad_to` so every stride divides it, and the
    outputs are cropped back.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", pad_to: int = 32):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.pad_to = pad_to

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        x = image_to_tensor(image)[None].to(self.device)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        out = self.model(x)
        return {
            "embedding": out["embedding"][0, :, :h, :w].float().cpu().numpy(),
            "seediness": out["seediness"][0, 0, :h, :w].float().cpu().numpy(),
            "semantic": out["semantic"][0, :, :h, :w].float().softmax(0).cpu().numpy(),
        }
