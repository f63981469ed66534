"""``RunConfig.validate``: precisions and decoding modes a run accepts, and the messages of
those it refuses."""

from __future__ import annotations

import pytest

from pipeline.run.config import RunConfig
from pipeline.worker.decode_modes import DECODE_MODES


def config(**kwargs) -> RunConfig:
    return RunConfig(source="/in", output="/out", **kwargs)


def test_fp16_without_gpus_is_refused_naming_the_alternatives():
    with pytest.raises(ValueError, match=r"fp16 runs on GPUs only .*--gpus-per-actor.*bf16"):
        config(precision="fp16", gpus_per_actor=0).validate()
    config(precision="fp16", gpus_per_actor=1).validate()
    config(precision="fp16").validate()  # auto: refused at the start if the cluster has no GPU


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fp32_and_bf16_run_on_cpu(precision):
    config(precision=precision).validate()


@pytest.mark.parametrize("mode", DECODE_MODES)
def test_every_decoding_mode_is_accepted(mode):
    config(decode=mode).validate()


def test_an_unknown_decoding_mode_is_refused_listing_the_modes():
    with pytest.raises(ValueError, match=r"--decode .* one of auto, cpu, draft, gpu, got 'nvjpeg'"):
        config(decode="nvjpeg").validate()
