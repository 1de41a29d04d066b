"""opensoraplan1_3 with the encoder engines: interleaved offload, encoder-DP and VAE-CP train exactly as encoding
every clip on every rank does (VAE sample, caption dropout, noise, timesteps and I2V masks drawn in features)."""

from __future__ import annotations

import pytest
from opensoraplan_testing import SHORT_RUN, osp_config, parallel_run

from mm_core.errors import ConfigError
from mm_models_video.opensoraplan1_3.plugin import model_provider

# Half the captions dropped: features draw the dropout from each sample's generator, as the forward does.
DROP = "data.dataset_param.cfg=0.5"
# Two steps of two micro-batches of one 5-frame clip (2 of the 4 captions dropped), 2 blocks: offload windows of 3
# cross a step boundary.
RUN = [*SHORT_RUN, "training.global_batch_size=2", "training.train_iters=2", DROP, "data.dataset_param.num_frames=5",
       "model.flavor=tiny", "model.predictor.num_layers=2"]


def test_offloaded_text_encoder_trains_like_encoding_every_step(mm_train) -> None:
    every = mm_train(["opensoraplan1_3"], *RUN)
    offloaded = mm_train(["opensoraplan1_3"], *RUN, "model.encoder_offload_interval=3")
    assert offloaded.losses == every.losses


def test_pipeline_stages_refuse_the_engines() -> None:
    config = osp_config("parallel.pp.size=2", "model.encoder_offload_interval=2")
    with pytest.raises(ConfigError, match="model.encoder_offload_interval with parallel.pp.size=2: the encoder"):
        model_provider(config, None)


@pytest.mark.slow
def test_i2v_offload_trains_like_encoding_every_step(mm_train) -> None:
    i2v = [*RUN, "model.task=i2v", "data.dataset_param.mask_type_ratio_dict_video={'i2v': 1, 'random_temporal': 1}"]
    every = mm_train(["opensoraplan1_3"], *i2v)
    assert mm_train(["opensoraplan1_3"], *i2v, "model.encoder_offload_interval=2").losses == every.losses


CP = ["parallel.cp.size=2", "parallel.cp.mode=ulysses", DROP]


@pytest.mark.slow
@pytest.mark.parametrize("engines", [
    ["model.enable_encoder_dp=true"],
    ["model.enable_encoder_dp=true", "model.encoder_offload_interval=2"],
    ["model.ae.vae_cp_size=2", "model.encoder_offload_interval=2"],
    ["model.enable_encoder_dp=true", "model.task=i2v"],
], ids=["encoder-dp", "encoder-dp-offload-2", "vae-cp-offload-2", "encoder-dp-i2v"])
def test_context_parallel_encoders_train_like_every_rank_encoding(tmp_path, engines: list[str]) -> None:
    task = [e for e in engines if e.startswith("model.task")]
    whole = parallel_run(2, tmp_path / "whole", *CP, *task)
    run = parallel_run(2, tmp_path / "engines", *CP, *engines)
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)


@pytest.mark.slow
def test_tensor_parallel_encoder_dp_trains_like_every_rank_encoding(tmp_path) -> None:
    tp = ["parallel.tp.size=2", DROP]
    whole = parallel_run(2, tmp_path / "whole", *tp)
    run = parallel_run(2, tmp_path / "dp", *tp, "model.enable_encoder_dp=true")
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)


@pytest.mark.slow
def test_fsdp2_leaves_the_offloaded_encoders_whole(tmp_path) -> None:
    fsdp = ["parallel.fsdp2.enable=true", DROP]
    whole = parallel_run(2, tmp_path / "whole", *fsdp)
    run = parallel_run(2, tmp_path / "offload", *fsdp, "model.encoder_offload_interval=2")
    assert run["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
