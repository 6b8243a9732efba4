"""Time or train pix2pix in PyTorch on the CPU, as netc's reference.

The networks match models/pix2pix.net: a U-Net generator with log2(size) levels, batch
norm after e2..e{levels - 1} and d{levels}..d2, dropout 0.5 after d{levels - 1}..d5
(three at 256, two at 128), and a PatchGAN discriminator. Only the generator's output
layer and the discriminator's first and last layers have biases. One
iteration is what netc's training step runs: the generator forward pass, a discriminator
step on real and detached fake pairs, then a generator step with GAN + 100 x L1 loss,
both with Adam (lr 2e-4, beta1 0.5).

By default it times iterations on random data and prints JSON with
`step_seconds_median` to standard output. With `--train DIR` it trains on the
side-by-side pairs in DIR the way `netc run --train` does (initialization from the .net,
netc's data order, crops and flips for the same seed, batch 1) and writes a CSV with the
columns of netc's losses.csv, one row per iteration. Training needs Pillow.
"""

import argparse
import csv
import json
import math
import statistics
import sys
import time

import torch
from torch import nn

# Learning rate and schedule of models/pix2pix.net's train section.
BASE_LR = 2e-4
DECAY_START = 100
DECAY_EPOCHS = 100

# The loss terms in the column order of netc's losses.csv for models/pix2pix.net.
LOSS_COLUMNS = ["d_real", "d_fake", "g_gan", "g_l1"]

# Samples in the image grid, as in netc's run folder.
GRID_SAMPLES = 4


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
    # Only the output layer, which has no batch norm, has a bias.
    layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not norm)]
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
            # e1 and the 1x1 bottleneck e{levels} have no batch norm.
            self.encoders.append(down(c_in, w, norm=0 < i < levels - 1, act=i > 0))
            c_in = w
        self.decoders = nn.ModuleList()
        # The ngf*8 decoders between the bottleneck's decoder and d4 use dropout:
        # d{levels - 1}..d5, three at 256, two at 128.
        dropout_levels = range(1, levels - 4)
        # Decoder k (innermost first) takes the previous decoder output concatenated with
        # the matching encoder output, except the innermost, which takes the bottleneck.
        outs = list(reversed([3] + widths[:-1]))
        for j, w in enumerate(outs):
            c_in = widths[-1] if j == 0 else 2 * widths[levels - 1 - j]
            last = j == levels - 1
            self.decoders.append(up(c_in, w, norm=not last, dropout=j in dropout_levels))
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
    # The first and the last convolution have a bias; the others feed a batch norm.
    layers = [nn.Conv2d(6, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
    c = ndf
    for mult, stride in [(2, 2), (4, 2), (8, 1)]:
        layers += [
            nn.Conv2d(c, ndf * mult, 4, stride, 1, bias=False),
            BatchNorm(ndf * mult),
            nn.LeakyReLU(0.2),
        ]
        c = ndf * mult
    layers.append(nn.Conv2d(c, 1, 4, 1, 1))
    return nn.Sequential(*layers)


def init_weights(module):
    """Draw the initial weights that models/pix2pix.net declares.

    Convolution weights come from N(0, 0.02), batch-norm scales from N(1, 0.02), and
    convolution biases and batch-norm offsets are 0.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def iterate(gen, disc, opt_g, opt_d, x, y):
    """Run one training iteration and return the loss terms (d_real, d_fake, g_gan, g_l1).

    The discriminator step reads the weights before its update, and the generator step
    reads the discriminator after it, as in netc's train section.
    """
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    fake = gen(x)
    opt_d.zero_grad()
    real_logits = disc(torch.cat([x, y], 1))
    fake_logits = disc(torch.cat([x, fake.detach()], 1))
    d_real = bce(real_logits, torch.ones_like(real_logits))
    d_fake = bce(fake_logits, torch.zeros_like(fake_logits))
    (d_real + d_fake).backward()
    opt_d.step()
    for p in disc.parameters():
        p.requires_grad_(False)
    opt_g.zero_grad()
    logits = disc(torch.cat([x, fake], 1))
    g_gan = bce(logits, torch.ones_like(logits))
    g_l1 = 100 * l1(fake, y)
    (g_gan + g_l1).backward()
    opt_g.step()
    for p in disc.parameters():
        p.requires_grad_(True)
    return d_real, d_fake, g_gan, g_l1


def time_steps(args):
    """Time `args.steps` iterations on random data and print the JSON summary."""
    torch.manual_seed(0)
    gen, disc = Generator(args.ngf, args.size), discriminator(args.ndf)
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    y = torch.rand(1, 3, args.size, args.size) * 2 - 1

    for _ in range(args.warmup):
        iterate(gen, disc, opt_g, opt_d, x, y)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        iterate(gen, disc, opt_g, opt_d, x, y)
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
                "step_seconds": times,
                "step_seconds_median": statistics.median(times),
                "step_seconds_min": min(times),
                "step_seconds_max": max(times),
            }
        )
    )


def lr_factor(epoch):
    """Compute the multiplier of the base rate under linear_decay(constant=100, decay=100).

    The formula is netc's (src/train/schedule.rs): the base rate for 100 epochs, then
    1/101 of the base less each epoch, reaching zero at epoch 200.
    """
    if epoch < DECAY_START:
        return 1.0
    return max(0.0, 1.0 - (epoch - DECAY_START + 1) / (DECAY_EPOCHS + 1))


def train(args):
    """Train on the paired images in `args.train` and write one CSV row per iteration."""
    # Pillow is needed only here, so the timing mode runs with PyTorch alone.
    from netc_data import PairedImages

    torch.manual_seed(args.seed)
    gen, disc = Generator(args.ngf, args.size), discriminator(args.ndf)
    gen.apply(init_weights)
    disc.apply(init_weights)
    opt_g = torch.optim.Adam(gen.parameters(), lr=BASE_LR, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=BASE_LR, betas=(0.5, 0.999))

    data_seed = args.seed if args.data_seed is None else args.data_seed
    started = time.perf_counter()
    # The data line of models/pix2pix.net: input=right, resize=size + 30, crop=size, flip=true.
    data = PairedImages(args.train, "right", args.size + 30, args.size)
    print(f"loaded {len(data)} pairs in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    total_seconds = 0.0
    with open(args.csv, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["step", "epoch", "lr", *LOSS_COLUMNS, "seconds_per_step"])
        for step in range(args.steps):
            started = time.perf_counter()
            epoch = step // len(data)
            lr = BASE_LR * lr_factor(epoch)
            for group in opt_g.param_groups + opt_d.param_groups:
                group["lr"] = lr
            x, y, _ = data.sample(data_seed, step)
            losses = [t.item() for t in iterate(gen, disc, opt_g, opt_d, x, y)]
            elapsed = time.perf_counter() - started
            total_seconds += elapsed
            values = [f"{v:.8g}" for v in losses]
            writer.writerow([step + 1, epoch, f"{lr:g}", *values, f"{elapsed:.6f}"])
            file.flush()

    if args.grid:
        write_grid(gen, data, args.grid)
    summary = {
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "data_seed": data_seed,
        "steps": args.steps,
        "mean_seconds_per_step": total_seconds / max(args.steps, 1),
    }
    print(json.dumps(summary))


def write_grid(gen, data, path):
    """Write a PNG of the first files' centre crops: input, generator output and target.

    The generator runs as netc's grids run it: batch statistics and dropout, one sample
    at a time, under the current random state.
    """
    from PIL import Image

    rows = []
    with torch.no_grad():
        for index in range(min(GRID_SAMPLES, len(data))):
            x, y = data.centre(index)
            rows.append([x, gen(x), y])
    side, gap = data.crop, 4
    grid = Image.new("RGB", (gap + 3 * (side + gap), gap + len(rows) * (side + gap)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            interleaved = bytes(pixels.permute(1, 2, 0).flatten().tolist())
            panel = Image.frombytes("RGB", (side, side), interleaved)
            grid.paste(panel, (gap + c * (side + gap), gap + r * (side + gap)))
    grid.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)

    parser.add_argument(
        "--steps", type=int, default=10, help="iterations to time, or to train with --train"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing")

    parser.add_argument(
        "--train",
        metavar="DIR",
        help="train on the side-by-side image pairs in DIR instead of timing random data",
    )
    parser.add_argument("--csv", default="losses.csv", help="loss file that --train writes")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of --train's initialization and dropout, and of its data unless --data-seed "
        "is set",
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        help="seed of --train's data order, crops and flips alone (default: --seed)",
    )
    parser.add_argument("--grid", metavar="PNG", help="image grid that --train writes at the end")
    args = parser.parse_args()

    if args.train:
        train(args)
    else:
        time_steps(args)


if __name__ == "__main__":
    main()
