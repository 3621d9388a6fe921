"""The peers benchmark's bookkeeping (no timing: benchmarks are not tests).

Runs only the pure summary and table code of ``benchmarks/peers.py`` on hand-made
timings, so a broken ratio or table is caught without running a benchmark.
"""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location(
        "peers", os.path.join(ROOT, "benchmarks", "peers.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_medians_over_the_reference(peers):
    items = {
        "train": peers.ITEMS["train_s16_adamw_gap"],
        "infer": peers.ITEMS["infer_b16_b8"],
    }
    times = {
        "train": {"big_vision": [1.0, 3.0, 2.0], "ours-jax": [1.0, 1.5, 9.0]},
        "infer": {"ours-jax": [0.5, 0.4, 0.6], "timm": [1.0, 0.8, 1.2]},
    }
    rows = peers.summarise(items, times, {}, "big_vision")
    assert rows["train"]["reference"] == "big_vision"
    assert rows["train"]["ratio"]["ours-jax"] == pytest.approx(1.5 / 2.0)
    # Without the reference in a row, the fastest framework is the reference.
    assert rows["infer"]["reference"] == "ours-jax"
    assert rows["infer"]["ratio"]["timm"] == pytest.approx(1.0 / 0.5)
    assert rows["infer"]["images_per_s"]["timm"] == pytest.approx(8 / 1.0)
    table = peers.markdown(items, rows, {}, list(peers.FRAMEWORKS))
    assert "| train | 2000 ms (1.00×) | 1500 ms (0.75×) | — |" in table
    assert "| infer | — | 16.00 img/s (1.00×) | 8.00 img/s (2.00×) |" in table


def test_forward_flops_agrees_with_xla(peers):
    # XLA's cost_analysis() of big_vision's jitted ViT-S/16 forward (224 px, batch 8)
    # counts 7.3700515840e10 FLOPs, matmuls plus ~1% elementwise work; the matmul-only
    # count used for MFU must sit just below it.
    ratio = peers.forward_flops(peers.ITEMS["train_s16_adamw_gap"]) / 7.3700515840e10
    assert 0.98 < ratio < 1.0


def test_unknown_item_is_rejected(peers):
    with pytest.raises(ValueError, match="`--items` must name"):
        peers.main(["--items", "nope"])


@pytest.mark.parametrize(
    "spec, match",
    [
        ("timm", "FRAMEWORK=PATH"),
        ("pytorch=/usr/bin/python3", "FRAMEWORK=PATH"),
        ("timm=/nonexistent/python", "not an executable"),
    ],
)
def test_bad_worker_python_is_rejected(peers, spec, match):
    with pytest.raises(ValueError, match=match):
        peers.main(["--quick", "--python", spec])


def test_timm_erf_runs_where_timm_runs(peers):
    pythons = peers._pythons([f"timm={sys.executable}"])
    assert peers._python_for("timm-erf", pythons) == sys.executable
    assert peers._python_for("timm-erf", {"timm": "/a", "timm-erf": "/b"}) == "/b"
    assert peers._python_for("ours-jax", {"timm": "/a"}) == sys.executable


@pytest.mark.parametrize(
    "before, after",
    [
        ("", "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1"),
        (
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2",
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
        ),
    ],
)
def test_hugepages_tunable_keeps_the_others(peers, before, after):
    assert peers._with_hugetlb(before) == after
