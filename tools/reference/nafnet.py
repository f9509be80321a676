"""PyTorch NAFNet, written from "Simple Baselines for Image Restoration" (Chen et al., 2022)
and /work/shared/design/AUTODIR.md section 4 (the AutoDIR structure-correction module, SCM).

This is the independent reference the Swift engine is tested against (fixtures are produced by
tools/fixtures/make_nafnet_fixture.py) and is meant to be reused by the training scripts.

SCM semantics: the network sees 6 channels (the degraded image and the AIR output, concatenated
on channels) and predicts a 3-channel residual that is added to channels 3..5 of the input
(the AIR output), scaled by `scm_weight` (1.0 in AutoDIR).

State-dict key names follow the reference implementation verbatim:
  intro.*, encoders.{i}.{j}.{conv1,conv2,conv3,conv4,conv5,sca.1,norm1,norm2}.*,
  encoders.{i}.{j}.beta, encoders.{i}.{j}.gamma, downs.{i}.*, middle_blks.{j}.*,
  ups.{i}.0.weight, decoders.{i}.{j}.*, ending.*
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension at every pixel (NCHW), eps 1e-6, per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)  # biased variance
        y = (x - mu) / torch.sqrt(var + self.eps)
        c = x.shape[1]
        return self.weight.view(1, c, 1, 1) * y + self.bias.view(1, c, 1, 1)


class SimpleGate(nn.Module):
    """Split channels into two halves a, b and return a * b."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2):
        super().__init__()
        dw = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, kernel_size=3, padding=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(dw // 2, c, kernel_size=1, bias=True)
        # simplified channel attention; its conv is `sca.1`
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw // 2, dw // 2, kernel_size=1, bias=True),
        )
        self.sg = SimpleGate()
        ffn = c * ffn_expand
        self.conv4 = nn.Conv2d(c, ffn, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        # zero-initialised as in the paper: every block starts as the identity
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.norm1(inp)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.sg(x)
        x = x * self.sca(x)
        x = self.conv3(x)
        y = inp + x * self.beta

        x = self.conv4(self.norm2(y))
        x = self.sg(x)
        x = self.conv5(x)
        return y + x * self.gamma


class NAFNet(nn.Module):
    def __init__(
        self,
        img_channel: int = 6,
        out_channel: int = 3,
        width: int = 64,
        middle_blk_num: int = 12,
        enc_blk_nums: Sequence[int] = (2, 2, 4, 8),
        dec_blk_nums: Sequence[int] = (2, 2, 2, 2),
        scm_weight: float = 1.0,
    ):
        super().__init__()
        assert len(enc_blk_nums) == len(dec_blk_nums)
        self.img_channel = img_channel
        self.out_channel = out_channel
        self.width = width
        self.middle_blk_num = middle_blk_num
        self.enc_blk_nums = list(enc_blk_nums)
        self.dec_blk_nums = list(dec_blk_nums)
        self.scm_weight = scm_weight

        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, out_channel, kernel_size=3, padding=1, bias=True)

        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()

        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, kernel_size=2, stride=2, bias=True))
            chan *= 2

        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])

        for num in dec_blk_nums:
            self.ups.append(
                nn.Sequential(nn.Conv2d(chan, chan * 2, kernel_size=1, bias=False), nn.PixelShuffle(2))
            )
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))

        self.padder_size = 2 ** len(self.encoders)

    def config(self) -> dict:
        """Mirrors the keys of scm/config.json in a model folder."""
        return {
            "img_channel": self.img_channel,
            "out_channel": self.out_channel,
            "width": self.width,
            "enc_blk_nums": list(self.enc_blk_nums),
            "middle_blk_num": self.middle_blk_num,
            "dec_blk_nums": list(self.dec_blk_nums),
        }

    @classmethod
    def from_config(cls, cfg: dict) -> "NAFNet":
        return cls(
            img_channel=cfg["img_channel"],
            out_channel=cfg["out_channel"],
            width=cfg["width"],
            middle_blk_num=cfg["middle_blk_num"],
            enc_blk_nums=cfg["enc_blk_nums"],
            dec_blk_nums=cfg["dec_blk_nums"],
        )

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad right/bottom to a multiple of 2**levels."""
        _, _, h, w = x.shape
        ph = (self.padder_size - h % self.padder_size) % self.padder_size
        pw = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, pw, 0, ph))

    def forward(self, inp: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """`trace`, if a dict, receives intermediate tensors (padded size) for debugging."""
        _, _, h, w = inp.shape
        inp = self.check_image_size(inp)

        x = self.intro(inp)
        if trace is not None:
            trace["intro_out"] = x
        encs = []
        for i, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            x = encoder(x)
            if trace is not None:
                trace[f"enc{i}_out"] = x
            encs.append(x)
            x = down(x)

        x = self.middle_blks(x)
        if trace is not None:
            trace["middle_out"] = x

        for i, (decoder, up, skip) in enumerate(zip(self.decoders, self.ups, encs[::-1])):
            x = up(x)
            x = x + skip
            x = decoder(x)
            if trace is not None:
                trace[f"dec{i}_out"] = x

        x = self.ending(x)
        if trace is not None:
            trace["ending_out"] = x
        x = x * self.scm_weight + inp[:, 3:6, :, :]
        return x[:, :, :h, :w]
