"""Networks for log-mel spectrograms (B, 1, n_mels, frames): a 2D CNN and a CRNN (convolutions, then a
GRU over time). `components.ml.models.build_model` builds them for recordings (`auto`: the CNN)."""

from __future__ import annotations

import torch
from torch import nn

from components.config import ModelConfig

FAMILIES_AUDIO = ("audio_cnn", "crnn")


def _conv_block(cin: int, cout: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(pool))


class _Encoder(nn.Sequential):
    """Five conv blocks (one 3x3 convolution each) of `width`, 2x, 4x, 4x, 4x channels; frequency and
    time pooled 2x in each of the first four (a 4 s window of 32 ms frames keeps 7 steps for the GRU).
    About 15 MFLOP per 32x126 window at width 16: fast enough to train on a CPU in minutes."""

    def __init__(self, in_channels: int, width: int):
        widths = [width, 2 * width, 4 * width, 4 * width, 4 * width]
        pools = [(2, 2), (2, 2), (2, 2), (2, 2), (1, 1)]
        blocks, cin = [], in_channels
        for w, p in zip(widths, pools, strict=True):
            blocks.append(_conv_block(cin, w, p))
            cin = w
        super().__init__(*blocks)
        self.out_channels = cin


class AudioCNN(nn.Module):
    """Conv blocks, then global average and max pooling over frequency and time, then a linear head."""

    def __init__(self, in_channels: int, num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.encoder = _Encoder(in_channels, cfg.width)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * self.encoder.out_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        return self.head(torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1))


class CRNN(nn.Module):
    """Conv blocks, frequency averaged out, a bidirectional GRU over the remaining time steps, mean over time."""

    def __init__(self, in_channels: int, num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.encoder = _Encoder(in_channels, cfg.width)
        self.rnn = nn.GRU(self.encoder.out_channels, cfg.rnn_hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.rnn_hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.encoder(x).mean(dim=2).transpose(1, 2)  # (B, T', C)
        out, _ = self.rnn(steps)
        return self.head(out.mean(dim=1))


def build_audio_model(family: str, in_channels: int, num_classes: int, cfg: ModelConfig) -> nn.Module:
    """`family` (one of FAMILIES_AUDIO) for spectrograms with `in_channels` channels."""
    return (CRNN if family == "crnn" else AudioCNN)(in_channels, num_classes, cfg)
