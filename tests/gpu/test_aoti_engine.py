"""The aoti backend (torch.export + AOTInductor package) on CUDA against eager torch."""

from __future__ import annotations

import dataclasses

from tests.gpu.conftest import GPU, open_engine, random_clips, rel_err

pytestmark = GPU


def test_aoti_on_cuda_equals_eager_at_every_batch_size(emim_xs_cfg, tmp_path):
    """One package with a dynamic batch 1..max_batch: fp32 rel 1e-4 against eager at each size."""
    cfg = dataclasses.replace(emim_xs_cfg, plan_cache_dir=str(tmp_path))
    with open_engine(cfg, "aoti", "cuda", "fp32") as aoti, open_engine(cfg, "torch", "cuda", "fp32") as eager:
        assert aoti.describe().device.startswith("cuda")
        for batch in (1, 4, 2, 3):
            clips = random_clips((batch, 3, 8, 128, 128), seed=batch).cuda()
            got = aoti.infer(clips)
            assert got.device.type == "cuda" and got.shape == (batch, 9)
            assert rel_err(got, eager.infer(clips)) <= 1e-4, f"batch {batch}"
    assert list((tmp_path).rglob("*.pt2")), "the package is cached in plan_cache_dir"
