"""Time one pix2pix training iteration in PyTorch on the CPU, as netc's reference.

The networks match models/pix2pix.net: a U-Net generator with log2(size) levels, no
convolution biases, batch norm after e2..e8 and d8..d2, dropout 0.5 after the three
innermost decoder layers, and a PatchGAN discriminator. One iteration is what netc's
training step runs: the generator forward pass, a discriminator step on real and
detached fake pairs, then a generator step with GAN + 100 x L1 loss, both with Adam
(lr 2e-4, beta1 0.5). Prints JSON with `step_seconds_median` to standard output.
"""

import argparse
import json
import math
import statistics
import time

import torch
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """Batch norm that accepts one value per channel in training mode.

    At batch size 1 the 1x1 bottleneck has zero variance, and nn.BatchNorm2d rejects it
    before computing anything; the underlying op is well defined because eps keeps the
    normalization finite, so this calls it directly.
    """

    def forward(self, x):
        return torch.batch_norm(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            self.training, self.momentum, self.eps, torch.backends.cudnn.enabled,
        )


def down(c_in, c_out, norm=True, act=True):
    layers = [nn.LeakyReLU(0.2)] if act else []
    layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False))
    if norm:
        layers.append(BatchNorm(c_out))
    return nn.Sequential(*layers)


def up(c_in, c_out, norm=True, dropout=False):
    layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    if norm:
        layers.append(BatchNorm(c_out))
    if dropout:
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(self, ngf, size):
        super().__init__()
        levels = int(math.log2(size))
        widths = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (levels - 3)
        self.encoders = nn.ModuleList()
        c_in = 3
        for i, w in enumerate(widths):
            self.encoders.append(down(c_in, w, norm=i > 0, act=i > 0))
            c_in = w
        self.decoders = nn.ModuleList()
        # Decoder k (innermost first) takes the previous decoder output concatenated with
        # the matching encoder output, except the innermost, which takes the bottleneck.
        outs = list(reversed([3] + widths[:-1]))
        for j, w in enumerate(outs):
            c_in = widths[-1] if j == 0 else 2 * widths[levels - 1 - j]
            last = j == levels - 1
            self.decoders.append(up(c_in, w, norm=not last, dropout=j < 3))
        self.tanh = nn.Tanh()

    def forward(self, x):
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        y = self.decoders[0](skips[-1])
        for j, dec in enumerate(self.decoders[1:], start=1):
            y = dec(torch.cat([y, skips[-1 - j]], dim=1))
        return self.tanh(y)


def discriminator(ndf):
    layers = [nn.Conv2d(6, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    c = ndf
    for mult, stride in [(2, 2), (4, 2), (8, 1)]:
        layers += [
            nn.Conv2d(c, ndf * mult, 4, stride, 1, bias=False),
            BatchNorm(ndf * mult),
            nn.LeakyReLU(0.2),
        ]
        c = ndf * mult
    layers.append(nn.Conv2d(c, 1, 4, 1, 1, bias=False))
    return nn.Sequential(*layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    gen, disc = Generator(args.ngf, args.size), discriminator(args.ndf)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    y = torch.rand(1, 3, args.size, args.size) * 2 - 1

    def iteration():
        fake = gen(x)
        opt_d.zero_grad()
        real_logits = disc(torch.cat([x, y], 1))
        fake_logits = disc(torch.cat([x, fake.detach()], 1))
        loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(
            fake_logits, torch.zeros_like(fake_logits)
        )
        loss_d.backward()
        opt_d.step()
        for p in disc.parameters():
            p.requires_grad_(False)
        opt_g.zero_grad()
        logits = disc(torch.cat([x, fake], 1))
        loss_g = bce(logits, torch.ones_like(logits)) + 100 * l1(fake, y)
        loss_g.backward()
        opt_g.step()
        for p in disc.parameters():
            p.requires_grad_(True)

    for _ in range(args.warmup):
        iteration()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "framework": f"pytorch {torch.__version__}",
                "threads": torch.get_num_threads(),
                "ngf": args.ngf,
                "ndf": args.ndf,
                "size": args.size,
                "generator_params": sum(p.numel() for p in gen.parameters()),
                "discriminator_params": sum(p.numel() for p in disc.parameters()),
                "step_seconds_median": statistics.median(times),
                "step_seconds_min": min(times),
                "step_seconds_max": max(times),
            }
        )
    )


if __name__ == "__main__":
    main()
