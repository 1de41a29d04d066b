"""mm-data: video datasets in MindSpeed-MM formats, decoding, transforms, resumable samplers, feature store."""

from mm_data.bad_samples import BadSamples
from mm_data.datasets import VideoTextDataset, collate
from mm_data.features import FeatureDataset, FeatureWriter, read_feature_index
from mm_data.formats import (
    DataConfig,
    DataloaderParam,
    DatasetParam,
    VideoRecord,
    load_data_config,
    parse_data_config,
    read_index,
)
from mm_data.sampler import EpochTagged, ResumableBatchSampler, bucket_keys, build_dataloader, build_rank_loader
from mm_data.synthetic import make_moving_shapes, write_video
from mm_data.transforms import check_video_shape, normalize_pixels, resize_center_crop
from mm_data.video import frame_indices, read_video

__version__ = "0.1.0"

__all__ = [
    "BadSamples",
    "DataConfig",
    "DataloaderParam",
    "DatasetParam",
    "EpochTagged",
    "FeatureDataset",
    "FeatureWriter",
    "ResumableBatchSampler",
    "VideoRecord",
    "VideoTextDataset",
    "bucket_keys",
    "build_dataloader",
    "build_rank_loader",
    "check_video_shape",
    "collate",
    "frame_indices",
    "load_data_config",
    "make_moving_shapes",
    "parse_data_config",
    "read_feature_index",
    "read_index",
    "read_video",
    "normalize_pixels",
    "resize_center_crop",
    "write_video",
]
