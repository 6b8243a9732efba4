"""Paired training images drawn exactly as netc's loader (src/train/data/) draws them.

Each file is two square halves side by side. Both halves are resized to `resize` x `resize`
with bicubic filtering and cached as 8-bit pixels, and each sample is a random `crop` x
`crop` window, mirrored left to right with probability 1/2, identical for both halves.
Values are mapped from [0, 255] to [-1, 1]. The file order of each epoch and each sample's
crop and flip come from ChaCha8 streams keyed by (seed, stream tag, epoch, position), as
in netc. So a run with netc's seed gets netc's files in netc's order, with the same crops
and flips.

NOTE: netc resizes with the `image` crate's Catmull-Rom filter and decodes JPEG with its
Rust decoder, while this module uses Pillow's bicubic filter (also a = -0.5) and libjpeg,
so pixels can differ by a few levels.
"""

import pathlib

import torch
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}

# Stream tags of src/train/data/mod.rs that keep the order and augmentation streams apart.
ORDER_STREAM = 0x6F72646572  # "order"
AUGMENT_STREAM = 0x6175676D  # "augm"

MASK32 = 0xFFFFFFFF
CHACHA_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


def rotate_left(value, bits):
    return ((value << bits) | (value >> (32 - bits))) & MASK32


def quarter_round(state, a, b, c, d):
    state[a] = (state[a] + state[b]) & MASK32
    state[d] = rotate_left(state[d] ^ state[a], 16)
    state[c] = (state[c] + state[d]) & MASK32
    state[b] = rotate_left(state[b] ^ state[c], 12)
    state[a] = (state[a] + state[b]) & MASK32
    state[d] = rotate_left(state[d] ^ state[a], 8)
    state[c] = (state[c] + state[d]) & MASK32
    state[b] = rotate_left(state[b] ^ state[c], 7)


def chacha8_block(key_words, counter):
    """Compute the 16 output words of ChaCha8 block `counter` with stream 0.

    The layout is that of the `rand_chacha` crate: a 64-bit block counter in words 12 and
    13 and a 64-bit stream number in words 14 and 15.
    """
    initial = [*CHACHA_CONSTANTS, *key_words, counter & MASK32, counter >> 32, 0, 0]
    state = list(initial)
    for _ in range(4):  # 8 rounds are 4 double rounds
        quarter_round(state, 0, 4, 8, 12)
        quarter_round(state, 1, 5, 9, 13)
        quarter_round(state, 2, 6, 10, 14)
        quarter_round(state, 3, 7, 11, 15)
        quarter_round(state, 0, 5, 10, 15)
        quarter_round(state, 1, 6, 11, 12)
        quarter_round(state, 2, 7, 8, 13)
        quarter_round(state, 3, 4, 9, 14)
    return [(s + i) & MASK32 for s, i in zip(state, initial)]


class ChaCha8Stream:
    """The output of `rand_chacha::ChaCha8Rng::from_seed` for netc's keys, as words.

    `next_u64` joins two consecutive words, low word first, which is what `rand_chacha`'s
    block buffer returns, including across block boundaries.
    """

    def __init__(self, seed, tag, epoch, index):
        self.key_words = []
        for value in (seed, tag, epoch, index):
            self.key_words += [value & MASK32, (value >> 32) & MASK32]
        self.counter = 0
        self.words = []

    def next_u32(self):
        if not self.words:
            self.words = chacha8_block(self.key_words, self.counter)
            self.counter += 1
        return self.words.pop(0)

    def next_u64(self):
        low = self.next_u32()
        return low | (self.next_u32() << 32)

    def below(self, n):
        """Draw a number in 0..n from the top bits of a 64-bit draw, as netc's `below`."""
        return (self.next_u64() * n) >> 64


def to_pixels(half, side):
    """Resize a PIL half to `side` x `side` and return it as a [3, side, side] uint8 tensor."""
    if half.size != (side, side):
        half = half.resize((side, side), Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(half.tobytes()), dtype=torch.uint8)
    return data.view(side, side, 3).permute(2, 0, 1).contiguous()


class PairedImages:
    """A folder of side-by-side pairs, decoded and resized once, as netc's `ImageDataset`.

    `input_half` is "left" or "right" and the target is the other half. Facades has the
    photo on the left and the label map on the right, so pix2pix reads input="right".
    """

    def __init__(self, folder, input_half, resize, crop):
        if input_half not in ("left", "right"):
            raise ValueError(f"invalid input half {input_half!r}: expected 'left' or 'right'")
        if crop > resize:
            raise ValueError(f"crop {crop} is larger than resize {resize}")
        folder = pathlib.Path(folder)
        self.files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.files:
            raise FileNotFoundError(f"no JPEG or PNG images in {folder}")
        self.resize, self.crop = resize, crop
        self.inputs, self.targets = [], []
        for path in self.files:
            left, right = self.split(path)
            left, right = to_pixels(left, resize), to_pixels(right, resize)
            source, target = (right, left) if input_half == "right" else (left, right)
            self.inputs.append(source)
            self.targets.append(target)
        self.orders = {}

    @staticmethod
    def split(path):
        image = Image.open(path).convert("RGB")
        width, height = image.size
        if height == 0 or width != 2 * height:
            raise ValueError(
                f"{path} is {width}x{height}, but a pair is two square halves side by side "
                "(width = 2 x height)"
            )
        return image.crop((0, 0, height, height)), image.crop((height, 0, width, height))

    def __len__(self):
        return len(self.files)

    def order(self, seed, epoch):
        """Draw the file order of `epoch`: a Fisher-Yates shuffle from the order stream."""
        if epoch not in self.orders:
            rng = ChaCha8Stream(seed, ORDER_STREAM, epoch, 0)
            order = list(range(len(self.files)))
            for i in range(len(order) - 1, 0, -1):
                j = rng.below(i + 1)
                order[i], order[j] = order[j], order[i]
            self.orders = {epoch: order}
        return self.orders[epoch]

    def sample(self, seed, step):
        """Return (input, target, file index) of global step `step` (from 0) at batch size 1.

        Each is a [1, 3, crop, crop] float tensor in [-1, 1].
        """
        epoch, position = divmod(step, len(self.files))
        index = self.order(seed, epoch)[position]
        rng = ChaCha8Stream(seed, AUGMENT_STREAM, epoch, position)
        slack = self.resize - self.crop
        x0 = rng.below(slack + 1)
        y0 = rng.below(slack + 1)
        mirrored = rng.next_u32() & 1 == 1
        return (
            self.window(self.inputs[index], x0, y0, mirrored),
            self.window(self.targets[index], x0, y0, mirrored),
            index,
        )

    def centre(self, index):
        """Return (input, target) of file `index` with the centre crop and no flip."""
        offset = (self.resize - self.crop) // 2
        return (
            self.window(self.inputs[index], offset, offset, False),
            self.window(self.targets[index], offset, offset, False),
        )

    def window(self, pixels, x0, y0, mirrored):
        window = pixels[:, y0 : y0 + self.crop, x0 : x0 + self.crop]
        if mirrored:
            window = window.flip(-1)
        return (window.float() / 127.5 - 1.0).unsqueeze(0)
