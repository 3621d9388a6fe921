"""FLOPs in the paper's convention against its model table (spec §1.1)."""

import pytest

from keras_scalevit.scaling import flops_per_image, tpu_v3_core_days, train_flops

# Scaling Vision Transformers, model table (GFLOPs at 224 and 384 px), as listed
# in shared/docs/big_vision_spec.md §1.1.
PAPER_GFLOPS = {
    "s/28": (0.7, 2.0),
    "s/16": (2.2, 7.7),
    "S/32": (2.2, 6.8),
    "Ti/16": (2.5, 9.3),
    "B/32": (8.6, 25.9),
    "S/16": (9.1, 30.9),
    "B/28": (11.3, 30.4),
    "B/16": (34.9, 110.8),
    "L/16": (122.5, 381.4),
    "g/14": (531.9, 1592.4),
    "G/14": (963.6, 2854.3),
}


@pytest.mark.parametrize("variant", sorted(PAPER_GFLOPS))
def test_flops_match_the_paper_table_to_its_digits(variant):
    for size, expected in zip((224, 384), PAPER_GFLOPS[variant], strict=True):
        assert round(flops_per_image(variant, size) / 1e9, 1) == expected


def test_b16_by_hand():
    # 196 tokens, D=768, M=3072, 12 blocks, 16x16x3 patches; 2 FLOPs per MAC.
    n, d, m = 196, 768, 3072
    block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    assert flops_per_image("B/16") == 12 * block + 2 * n * 16 * 16 * 3 * d


def test_head_is_counted_only_on_request():
    base = flops_per_image("B/16", pool_type="map", num_classes=1000)
    with_head = flops_per_image("B/16", num_classes=1000, include_head=True)
    n, d, m = 196, 768, 3072
    head = 2 * 2 * d * d + 2 * 2 * n * d * d + 4 * n * d + 4 * d * m + 2 * d * 1000
    assert with_head - base == head
    # A class token adds one token to every block.
    assert flops_per_image("B/16", pool_type="tok") > base


def test_overrides_and_train_flops():
    tiny = flops_per_image("mu/2", 8, width=64, depth=2, num_heads=4, mlp_dim=256)
    n, d, m = 16, 64, 256
    assert tiny == 2 * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d) + (
        2 * n * 4 * 3 * d
    )
    assert train_flops("B/16", 224, 10) == 30 * flops_per_image("B/16")
    assert train_flops("B/16", 224, 0) == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image_size=0), ValueError, "image_size"),
        (dict(image_size=8), ValueError, "image_size"),
        (dict(pool_type="cls"), ValueError, "pool_type"),
        (dict(num_classes=-1), ValueError, "num_classes"),
        (dict(widht=3), TypeError, "widht"),
        (dict(num_heads=5), ValueError, "num_heads"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        flops_per_image("B/16", **kwargs)


def test_bad_examples_seen():
    with pytest.raises(ValueError, match="examples_seen"):
        train_flops("B/16", 224, -1)


def test_tpu_v3_core_days():
    # One TPU-v3 core at its bfloat16 peak (123 TFLOP/s per 2-core chip) for a day.
    assert tpu_v3_core_days(123e12 / 2 * 86_400, utilization=1.0) == pytest.approx(1.0)
    assert tpu_v3_core_days(123e12 / 2 * 86_400, utilization=0.25) == pytest.approx(4.0)
    assert tpu_v3_core_days(0, utilization=0.5) == 0.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(flops=-1.0, utilization=0.5), ValueError, "`flops`"),
        (dict(flops=float("nan"), utilization=0.5), ValueError, "`flops`"),
        (dict(flops=1e18, utilization=0.0), ValueError, "`utilization`"),
        (dict(flops=1e18, utilization=1.5), ValueError, "`utilization`"),
        (dict(flops=1e18, utilization="high"), TypeError, "`utilization`"),
    ],
)
def test_tpu_v3_core_days_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tpu_v3_core_days(**kwargs)


def test_tpu_v3_core_days_needs_a_utilization():
    with pytest.raises(TypeError, match="utilization"):
        tpu_v3_core_days(1e18)
