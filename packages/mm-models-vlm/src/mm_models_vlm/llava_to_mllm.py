"""``mm-llava-to-mllm IN OUT``: convert LLaVA-Instruct-150K (conversations of from/value) into mllm_format."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mm_core.errors import MMError
from mm_data.mllm_format import llava_to_mllm


def convert(src: Path, dst: Path, image_dir: str, force: bool = False) -> tuple[int, int]:
    """Convert ``src`` to ``dst``; returns (records written, records skipped for a missing image)."""
    if dst.exists() and not force:
        raise MMError(f"{dst} already exists; remove it or pass --force")
    try:
        items = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MMError(f"{src} does not exist") from None
    except json.JSONDecodeError as exc:
        raise MMError(f"{src} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise MMError(f"{src} must hold a JSON list of LLaVA records")
    records, skipped = llava_to_mllm(items, image_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return len(records), skipped


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="mm-llava-to-mllm", description=__doc__)
    parser.add_argument("src", type=Path, help="llava_instruct_150k.json")
    parser.add_argument("dst", type=Path, help="output, e.g. ./data/mllm_format_llava_instruct_data.json")
    parser.add_argument("--image-dir", default="./data/COCO2017/train2017",
                        help="folder of the COCO images the records name (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    try:
        written, skipped = convert(args.src, args.dst, args.image_dir, args.force)
    except MMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} records to {args.dst} ({skipped} skipped: image not found under {args.image_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
