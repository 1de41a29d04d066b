"""Generated data: images of a circle, a square or a cross, of random colour, size and place."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "cross")


class ShapesDataset(Dataset):
    """``{"image": float [3, S, S] in [-1, 1], "label": int}``; sample ``i`` is the same on every call and rank."""

    def __init__(self, num_samples: int, image_size: int, seed: int) -> None:
        self.num_samples, self.size, self.seed = num_samples, image_size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(len(CLASSES), (), generator=gen))
        radius = self.size * (0.15 + 0.15 * torch.rand((), generator=gen))
        cy, cx = (radius + (self.size - 2 * radius) * torch.rand(2, generator=gen)).tolist()
        ys, xs = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        dy, dx = (ys - cy).abs(), (xs - cx).abs()
        if CLASSES[label] == "circle":
            mask = dy**2 + dx**2 <= radius**2
        elif CLASSES[label] == "square":
            mask = (dy <= radius * 0.8) & (dx <= radius * 0.8)
        else:
            mask = ((dy <= radius / 4) & (dx <= radius)) | ((dx <= radius / 4) & (dy <= radius))
        background, colour = torch.rand(3, 1, 1, generator=gen) - 1, torch.rand(3, 1, 1, generator=gen)
        image = torch.where(mask, colour, background)
        return {"image": image, "label": label}
