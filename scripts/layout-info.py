#!/usr/bin/env python3
"""Prints what benchmarks need to know about the image tagged TAG in the OCI
layout LAYOUT, on one line: manifest digest, config digest, total layer bytes,
config bytes, layer count, first layer digest. Fails unless every layer is gzip.

Usage: layout-info.py LAYOUT TAG
"""
import json
import sys

layout, tag = sys.argv[1], sys.argv[2]
index = json.load(open(f"{layout}/index.json"))
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
algo, hexd = desc["digest"].split(":")
manifest = json.load(open(f"{layout}/blobs/{algo}/{hexd}"))
layers = manifest["layers"]
assert all(l["mediaType"].endswith("tar+gzip") for l in layers), "non-gzip layer"
print(desc["digest"], manifest["config"]["digest"], sum(l["size"] for l in layers),
      manifest["config"]["size"], len(layers), layers[0]["digest"])
