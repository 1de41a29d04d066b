"""Generated image-question-answer samples: the model must name an image's colour (one answer token)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
BOS, QUESTION, EOS, FIRST_ANSWER = 1, 2, 3, 4  # token ids; answers are FIRST_ANSWER + colour


class ColourQA(Dataset):
    """``{"input_ids", "labels", "pixel_values"}``: <bos> <image>×N <question> <answer> <eos>; loss on the answer."""

    def __init__(self, num_samples: int, image_size: int, image_token_id: int, image_seq_length: int,
                 seed: int) -> None:
        self.num_samples, self.image_size, self.seed = num_samples, image_size, seed
        self.image_token_id, self.image_seq_length = image_token_id, image_seq_length

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        colour = int(torch.randint(len(COLOURS), (), generator=gen))
        noise = 0.3 * torch.randn(3, self.image_size, self.image_size, generator=gen)
        pixels = COLOURS[colour].view(3, 1, 1) + noise
        ids = torch.tensor([BOS, *[self.image_token_id] * self.image_seq_length, QUESTION, FIRST_ANSWER + colour, EOS])
        labels = torch.full_like(ids, -100)
        labels[-2:] = ids[-2:]
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}
