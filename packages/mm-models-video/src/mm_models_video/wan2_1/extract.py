"""``mm extract`` for wan2_1: encode each clip and caption once into latents and prompt embeddings."""

from __future__ import annotations

import json
from pathlib import Path

from mm_core.config import Config
from mm_core.errors import ConfigError, DataError
from mm_core.runtime import Runtime
from mm_data.bad_samples import BadSamples
from mm_data.features import INDEX, FeatureWriter, read_feature_index
from mm_models_video.wan2_1.build import build_model
from mm_models_video.wan2_1.data import FEATURE_TYPE, check_clip_fits, data_config, video_dataset


def merge_indexes(out_dir: Path, rank_dirs: list[Path]) -> int:
    """Write ``out_dir``/data.jsonl listing every rank's samples (shard paths relative to ``out_dir``)."""
    lines = []
    for rank_dir in rank_dirs:
        for entry in read_feature_index(rank_dir):
            lines.append(json.dumps({**entry, "shard": f"{rank_dir.name}/{entry['shard']}"}) + "\n")
    (out_dir / INDEX).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def extract_features(config: Config, runtime: Runtime) -> str:
    """Encode this rank's share of the videos into ``extract.output_dir``; rank 0 writes data.jsonl, data.json."""
    if not config.extract.output_dir:
        raise ConfigError("extract.output_dir is not set: pass --output-dir DIR (where the feature shards go)")
    data = data_config(config)
    if data.dataset_param.dataset_type == FEATURE_TYPE:
        raise ConfigError("data.dataset_param.dataset_type is 'feature': extraction needs the raw videos' data.json")
    out_dir = Path(config.extract.output_dir)
    if (out_dir / INDEX).exists():
        raise DataError(f"extract.output_dir {out_dir} already holds features ({INDEX}); choose a new folder")
    model = build_model(config.model)
    check_clip_fits(config, model)
    model = model.to(runtime.device).eval()
    dataset = video_dataset(config, data)
    bad = BadSamples(data.on_bad_sample)
    with FeatureWriter(out_dir / f"rank_{runtime.rank:05d}", config.extract.shard_size) as writer:
        for index in range(runtime.rank, len(dataset), runtime.world_size):
            try:
                item = dataset.load(index)
            except DataError as exc:
                bad.skip(exc)
                continue
            latents = model.encode_video(item["video"].unsqueeze(0).to(runtime.device))[0]
            length = int(model.tokenize([item["prompt"]])[1].sum())
            embeds = model.encode_text([item["prompt"]])[0, :length].to(model.text_encoder.dtype)
            writer.add({"latents": latents, "prompt_embeds": embeds}, prompt=item["prompt"], index=index)
    runtime.barrier()
    if not runtime.is_main:
        return f"rank {runtime.rank}: extracted its share into {writer.out_dir}"
    count = merge_indexes(out_dir, [out_dir / f"rank_{r:05d}" for r in range(runtime.world_size)])
    feature_data = {
        "dataset_param": {"dataset_type": FEATURE_TYPE, "basic_parameters": {"data_path": str(out_dir / INDEX)}},
        "dataloader_param": config.data.to_dict().get("dataloader_param", {}),
        "on_bad_sample": data.on_bad_sample,
    }
    (out_dir / "data.json").write_text(json.dumps(feature_data, indent=2), encoding="utf-8")
    return (
        f"extracted {count} samples ({bad.count} skipped on rank 0) into {out_dir}; train on them with:\n"
        f"  mm run --plugin wan2_1 --data {out_dir / 'data.json'}"
    )


