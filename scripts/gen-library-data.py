#!/usr/bin/env python3
"""Writes MIB MiB of deterministic, library-like data to PATH: per 4 MiB, 3 MiB
of random bytes (incompressible, like machine code), 768 KiB of hex text and
256 KiB of zeros, so gzip gets about 1.1:1, as on large shared libraries. The same
PATH base name (or --seed) always gives the same bytes.

Usage: gen-library-data.py PATH MIB [--seed TEXT]
"""
import argparse
import hashlib
import random

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("path")
parser.add_argument("mib", type=int)
parser.add_argument("--seed", help="default: the base name of PATH")
args = parser.parse_args()

seed = args.seed if args.seed is not None else args.path.rsplit("/", 1)[-1]
rng = random.Random(hashlib.sha256(seed.encode()).digest())
hexa = bytes.maketrans(bytes(range(256)), bytes(b"0123456789abcdef"[i % 16] for i in range(256)))
zeros = bytes(256 << 10)
with open(args.path, "wb") as f:
    for _ in range(args.mib // 4):
        f.write(rng.randbytes(3 << 20))
        f.write(rng.randbytes(768 << 10).translate(hexa))
        f.write(zeros)
    f.write(rng.randbytes((args.mib % 4) << 20))
