"""`recon weights list|pull|verify`: see which model weights are installed, fetch them, check them.

Examples:
    recon weights list                      # name, source, licence, installed or not
    recon weights list --all                # also the tiny test variants
    recon weights pull streamvggt           # into the Hugging Face cache (needs network; gated repos need HF_TOKEN)
    recon weights verify streamvggt         # keys/shapes against the model built on the meta device, sha256
    recon weights verify vggt-1b --weights ~/ckpt/model.pt --full   # also load strictly into a real model
"""

from __future__ import annotations

import argparse

HELP = "list, download (pull) or verify model weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="registered weights: source, licence, installed or not")
    p.add_argument("--all", action="store_true", help="include tiny test-only entries")
    p = sub.add_parser("pull", help="download weights into the Hugging Face cache")
    p.add_argument("name", help="registry name (see `recon weights list`)")
    p.add_argument("--file", default=None, help="which file of the entry (default: the preferred one)")
    p = sub.add_parser("verify", help="check a weights file against the model (keys, shapes, sha256)")
    p.add_argument("name", help="registry name (see `recon weights list`)")
    p.add_argument("--weights", default=None, help="explicit file or folder (default: the Hugging Face cache)")
    p.add_argument("--full", action="store_true", help="also load strictly into a real CPU model (needs RAM)")


def _list(include_test: bool) -> int:
    from recon.models.registry import get_weights_cfg, list_weights
    from recon.models.weights import find_local_weights, hf_cache_dir

    rows = []
    for name in list_weights(include_test=include_test):
        cfg = get_weights_cfg(name)
        path = find_local_weights(name)
        use = "commercial ok" if cfg.commercial_use else "NON-COMMERCIAL"
        rows.append((name, cfg.source + (" (gated)" if cfg.gated else ""), f"{use}: {cfg.licence}",
                     f"installed: {path}" if path else "not installed"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"Hugging Face cache: {hf_cache_dir()}")
    for name, source, licence, state in rows:
        print(f"{name:<{widths[0]}}  {source:<{widths[1]}}  {state}")
        print(f"{'':<{widths[0]}}  licence: {licence}")
    return 0


def _pull(name: str, filename: str | None) -> int:
    from recon.models.registry import get_weights_cfg
    from recon.models.weights import download_weights

    cfg = get_weights_cfg(name)
    print(f"{name}: licence {cfg.licence}")
    if cfg.notes:
        print(f"note: {cfg.notes}")
    path = download_weights(name, filename)
    print(f"{name}: {path}")
    return 0


def _verify(name: str, weights: str | None, full: bool) -> int:
    from recon.models.weights import resolve_weights, verify_weights

    path = resolve_weights(name, weights)
    report, checksum = verify_weights(name, path, full_load=full)
    print(f"{name}: {path}")
    print(f"  {report.describe()}; {checksum}" + ("; loaded strictly" if full else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.all)
    if args.action == "pull":
        return _pull(args.name, args.file)
    return _verify(args.name, args.weights, args.full)
