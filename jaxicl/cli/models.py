"""`jaxicl models`: the registry names and the supported families with their sources."""

from __future__ import annotations

import argparse
import json

from jaxicl.io.registry import supported_models


def main(args: argparse.Namespace) -> None:
    models = supported_models()
    if args.json:
        print(json.dumps(models, indent=1))
        return
    print("Registry names (jaxicl.load(name); the default first):")
    for entry in models["registry"]:
        mark = " (default)" if entry.get("default") else ""
        print(f"  {entry['name']}{mark}: {entry['description']} [{entry['family']}, {entry['format']}; needs {entry['needs']}]")
    print("\nFamilies (a Hugging Face directory, hf:org/name[@revision], or a GGUF file where listed):")
    for entry in models["families"]:
        gguf = ", ".join(entry["gguf_architectures"]) or "none"
        print(f"  {entry['family']}: HF model_type {', '.join(entry['hf_model_types'])}; GGUF architecture {gguf}; "
              f"sources: {'; '.join(entry['sources'])}")  # fmt: skip


def add(sub) -> None:
    parser = sub.add_parser("models", help="the registry names and the supported model families, with their sources")
    parser.add_argument("--json", action="store_true", help="print the same as JSON")
    parser.set_defaults(func=main)
