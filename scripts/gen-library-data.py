#!/usr/bin/env python3
"""Writes MIB MiB of deterministic benchmark data to PATH, of one of two kinds:

library (default): like large shared libraries. Per 4 MiB, 3 MiB of random
  bytes (incompressible, like machine code), 768 KiB of hex text and 256 KiB of
  zeros, so gzip gets about 1.1:1.
weights: like model weights in float16 (N(0, ~0.02)): each 2-byte value has a
  random low byte (mantissa) and a high byte drawn from the few sign/exponent
  patterns such weights use: `gzip -6` leaves about 90 %, and the gzip of
  `umoci raw add-layer` stores it almost as it is (~100 %, measured here).

The same PATH base name (or --seed) always gives the same bytes.

Usage: gen-library-data.py PATH MIB [--seed TEXT] [--kind library|weights]
"""
import argparse
import hashlib
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("path")
parser.add_argument("mib", type=int)
parser.add_argument("--seed", help="default: the base name of PATH")
parser.add_argument("--kind", choices=("library", "weights"), default="library")
args = parser.parse_args()

seed = args.seed if args.seed is not None else args.path.rsplit("/", 1)[-1]
rng = random.Random(hashlib.sha256(seed.encode()).digest())
MIB = 1 << 20


def library_mib(n):
    """n MiB (a multiple of 4, plus a random tail) of library-like bytes."""
    hexa = bytes.maketrans(bytes(range(256)), bytes(b"0123456789abcdef"[i % 16] for i in range(256)))
    zeros = bytes(256 << 10)
    for _ in range(n // 4):
        yield rng.randbytes(3 << 20)
        yield rng.randbytes(768 << 10).translate(hexa)
        yield zeros
    yield rng.randbytes((n % 4) << 20)


def weights_mib(n):
    """n MiB of float16-like values, little-endian (low byte first)."""
    # A random byte i picks the high byte: sign from bit 0, the 2 top mantissa
    # bits from bits 1-2, the exponent from bits 3-7 with weights shaped like
    # |N(0, 0.02)| (biased exponents 5..10, mostly 8).
    exponents = [8] * 16 + [7] * 8 + [9] * 4 + [6] * 2 + [5] + [10]
    high = bytes.maketrans(
        bytes(range(256)),
        bytes((i & 1) << 7 | exponents[i >> 3] << 2 | (i >> 1) & 3 for i in range(256)))
    for _ in range(n):
        block = bytearray(MIB)
        block[0::2] = rng.randbytes(MIB // 2)
        block[1::2] = rng.randbytes(MIB // 2).translate(high)
        yield block


with open(args.path, "wb") as f:
    for chunk in (weights_mib if args.kind == "weights" else library_mib)(args.mib):
        f.write(chunk)
