"""The peers benchmark's bookkeeping (no timing: benchmarks are not tests).

Runs only the pure summary and table code of ``benchmarks/peers.py`` on hand-made
timings, so a broken ratio or table is caught without running a benchmark, and
small programs through its runners (a 4×3 matmul, TensorFlow's XLA cost).
"""

import argparse
import platform
import sys

import numpy as np
import pytest
from conftest import BACKEND, load_peers


@pytest.fixture(scope="module")
def peers():
    return load_peers()


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


@pytest.mark.parametrize(
    "n, k", [(5, 1), (6, 1), (10, 2), (17, 5), (30, 10)]
)  # the largest k with 1 - 2 P(Binomial(n, 1/2) < k) >= 95%, from a binomial table
def test_median_interval_takes_the_binomial_order_statistics(peers, n, k):
    values = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    median, low, high, coverage = peers.median_interval(values)
    assert median == (n + 1) / 2
    assert (low, high) == (k, n + 1 - k)
    assert coverage >= (0.95 if n >= 6 else 0.9375)


def test_median_interval_covers_the_true_median_as_often_as_it_says(peers):
    # Lognormal values with true median 1: the intervals must hold 1 in their
    # stated share of 4000 samples, to 4 binomial standard errors (~0.3% each).
    rng = np.random.default_rng(0)
    for n in (5, 9, 15):
        runs = [peers.median_interval(rng.lognormal(0, 0.2, n)) for _ in range(4000)]
        hit = np.mean([lo <= 1 <= hi for _, lo, hi, _ in runs])
        stated = runs[0][3]
        assert all(r[3] == stated for r in runs)
        assert hit >= stated - 4 * np.sqrt(stated * (1 - stated) / 4000)
        # ... and no more: an interval wider than its stated coverage fails here.
        assert hit <= stated + 4 * np.sqrt(stated * (1 - stated) / 4000)


def test_median_interval_rejects_bad_input(peers):
    with pytest.raises(ValueError, match="`values` must hold at least one"):
        peers.median_interval([])
    with pytest.raises(
        ValueError, match="`level` must lie strictly between 0 and 1, got 1.5"
    ):
        peers.median_interval([1.0, 2.0], level=1.5)


def test_paired_ratios_cancel_the_drift_the_rounds_share(peers):
    items = {"train": peers.ITEMS["train_s16_adafactor_gap"]}
    # The machine drifts 1 -> 2 s; ours is 0.9x the reference in every round, so the
    # paired interval is exactly 0.9 although the unpaired times overlap widely.
    ref = [1.0, 2.0, 1.5, 1.2, 1.8, 1.1]
    times = {"train": {"big_vision": ref, "ours-jax": [0.9 * t for t in ref]}}
    times["train"]["timm"] = [1.1 * t for t in ref[:4]]  # died after round 4
    rows = peers.summarise(items, times, {}, "big_vision")
    paired = rows["train"]["paired_ratio"]
    assert "big_vision" not in paired
    assert paired["ours-jax"]["median"] == pytest.approx(0.9)
    assert paired["ours-jax"]["low"] == pytest.approx(0.9)
    assert paired["ours-jax"]["high"] == pytest.approx(0.9)
    assert paired["ours-jax"]["pairs"] == 6
    assert paired["timm"]["pairs"] == 4
    assert paired["timm"]["median"] == pytest.approx(1.1)
    table = peers.markdown(items, rows, {}, ["big_vision", "ours-jax", "timm"])
    assert "| train | ref | 0.900 [0.900, 0.900] | 1.100 [1.100, 1.100] |" in table
    assert "87.5% / 96.9% coverage" in table


def test_matmul_rate_is_its_flops_over_the_median(peers):
    items = {"mm": peers.ITEMS["matmul_b16_mlp"]}  # (1568, 768) @ (768, 3072)
    times = {"mm": {"ours-torch": [0.03, 0.02, 0.04], "timm": [0.04, 0.05, 0.06]}}
    rows = peers.summarise(items, times, {}, "timm")
    # 2·1568·768·3072 = 7.3988e9 FLOPs: 246.6 GFLOP/s at 30 ms, 148.0 at 50 ms.
    assert rows["mm"]["gflops_per_s"]["ours-torch"] == pytest.approx(246.625, 1e-4)
    assert rows["mm"]["gflops_per_s"]["timm"] == pytest.approx(147.975, 1e-4)
    table = peers.markdown(items, rows, {}, ["ours-torch", "timm"])
    assert "| mm | 247 GFLOP/s (0.60×) | 148 GFLOP/s (1.00×) |" in table


_KERNELS = {"tensorflow": ["ours-tensorflow", "ours-tensorflow-xla"]}


@pytest.mark.parametrize("framework", _KERNELS.get(BACKEND, [f"ours-{BACKEND}"]))
def test_matmul_runner_multiplies_with_each_backend_kernel(peers, framework):
    step, _ = peers._matmul_runner(framework, {"kind": "matmul", "shape": (4, 3, 2)})
    rng = np.random.default_rng(0)  # the runner's documented operands
    a = rng.standard_normal((4, 3), dtype=np.float32)
    b = rng.standard_normal((3, 2), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(step()), a @ b, rtol=1e-5, atol=1e-6)


def test_forward_flops_agrees_with_xla(peers):
    # XLA's cost_analysis() of big_vision's jitted ViT-S/16 forward (224 px, batch 8)
    # counts 7.3700515840e10 FLOPs, matmuls plus ~1% elementwise work; the matmul-only
    # count used for MFU must sit just below it.
    ratio = peers.forward_flops(peers.ITEMS["train_s16_adamw_gap"]) / 7.3700515840e10
    assert 0.98 < ratio < 1.0


def test_unknown_item_is_rejected(peers):
    with pytest.raises(ValueError, match="`--items` must name"):
        peers.main(["--items", "nope"])


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
    assert peers._with_tunables(before, ["glibc.malloc.hugetlb=1"]) == after


def test_glibc_tunables_join_hugepages(peers):
    args = peers.argparse.Namespace(
        hugepages=True, glibc_tunables="glibc.malloc.trim_threshold=1:glibc.x.y=2"
    )
    added = peers._tunables(args)
    assert added == [
        "glibc.malloc.hugetlb=1",
        "glibc.malloc.trim_threshold=1",
        "glibc.x.y=2",
    ]
    assert peers._with_tunables(
        "glibc.malloc.trim_threshold=9:glibc.a=3", added
    ) == "glibc.a=3:" + ":".join(added)
    # A tunable given twice keeps one value: the user's over --hugepages'.
    args.glibc_tunables = "glibc.malloc.hugetlb=0"
    assert peers._tunables(args) == ["glibc.malloc.hugetlb=0"]
    args.hugepages, args.glibc_tunables = False, None
    assert peers._tunables(args) == []


@pytest.mark.parametrize("bad", ["trim_threshold=1", "glibc.malloc.trim_threshold"])
def test_bad_glibc_tunables_are_rejected(peers, bad):
    with pytest.raises(ValueError, match="`--glibc-tunables` must be"):
        peers.main(["--quick", "--glibc-tunables", bad])


def test_timed_counts_the_fresh_pages_a_step_touches(peers):
    import mmap

    pytest.importorskip("resource", reason="page-fault counts need POSIX getrusage")

    def fresh():  # 32 MiB of new anonymous memory, every page touched
        with mmap.mmap(-1, 32 << 20) as m:
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
                m.madvise(mmap.MADV_NOHUGEPAGE)  # small pages, even with THP "always"
            for i in range(0, len(m), mmap.PAGESIZE):
                m[i] = 1

    buffer = bytearray(32 << 20)

    def reused():  # the same pages every time
        for i in range(0, len(buffer), mmap.PAGESIZE):
            buffer[i] = 1

    reused()
    touched, quiet = peers.timed(fresh, 2), peers.timed(reused, 2)
    pages = (32 << 20) // mmap.PAGESIZE
    assert touched["minor_faults"] >= 0.9 * pages
    assert quiet["minor_faults"] < 0.1 * pages
    assert touched["seconds"] > 0 and touched["sys_s"] >= 0


def test_faults_are_summarised_and_tabled(peers):
    items = {"infer": peers.ITEMS["infer_b16_b8"]}
    times = {"infer": {"ours-torch": [1.0, 1.2, 1.1], "timm": [1.0, 1.3, 1.1]}}
    faults = {"infer": {"ours-torch": [0.0, 5.0, 1.0], "timm": [0.0, 66e3, 40e3]}}
    rows = peers.summarise(items, times, {}, "big_vision", faults)
    assert rows["infer"]["minor_faults_per_step"] == {"ours-torch": 1.0, "timm": 40e3}
    table = peers.markdown(items, rows, {}, list(peers.FRAMEWORKS))
    assert "| infer | 1 | 40000 |" in table
    # Without fault counts (results of an older run) there is no such table.
    rows = peers.summarise(items, times, {}, "big_vision")
    assert "Minor page faults" not in peers.markdown(items, rows, {}, ["timm"])


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="imports TensorFlow: runs in the TensorFlow pass only",
)
def test_tf_cost_reads_tensorflow_xla_programs(peers):
    import tensorflow as tf

    # [16, 32] @ [32, 8]: 2·16·32·8 FLOPs in the dot; the three f32 arrays are
    # (16·32 + 32·8 + 16·8)·4 bytes, each read or written once at least.
    matmul = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
    cost = peers._tf_cost(matmul, tf.ones((16, 32)), tf.ones((32, 8)))
    assert cost["flops"] == 2 * 16 * 32 * 8
    assert cost["bytes_accessed"] >= (16 * 32 + 32 * 8 + 16 * 8) * 4
    # A chain of elementwise ops is fused: one fusion that holds all of them.
    chain = tf.function(lambda a: tf.exp(a) * 2.0 + tf.sin(a), jit_compile=True)
    stats = peers._tf_cost(chain, tf.ones((64, 64)))
    assert stats["fusions"] == 1 and stats["largest_fusion"] >= 5


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="starts TensorFlow workers: run once, in the TensorFlow pass",
)
def test_tensorflow_workers_run_the_kernels_they_name(peers, tmp_path):
    # Each worker sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported; the
    # worker reports what TensorFlow then says it runs.
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("TensorFlow's oneDNN kernels: x86-64 Linux builds")
    result = peers.main(
        [
            "--quick",
            "--frameworks=ours-tensorflow-eigen,ours-tensorflow-onednn",
            "--rounds=1",
            "--steps=1",
            f"--out={tmp_path}",
        ]
    )
    (item,) = result["items"]
    workers = result["workers"]
    assert workers["ours-tensorflow-eigen"][item]["tf_onednn"] is False
    assert workers["ours-tensorflow-onednn"][item]["tf_onednn"] is True
    assert all(result["times_s"][item][fw] for fw in workers)


def test_a_control_worker_runs_its_framework(peers):
    # NAME@K is one more worker of NAME: the same worker, in the same Python.
    assert peers._framework("big_vision@2") == "big_vision"
    assert peers._framework("timm-erf@3") == "timm-erf"
    assert peers._python_for("timm-erf@2", {"timm": "/a"}) == "/a"
    args = argparse.Namespace(
        python=[f"timm={sys.executable}"], big_vision_dir=None, torch_compile=False
    )
    cmd = peers._command("timm-erf@2", {}, args)
    assert cmd[0] == sys.executable
    assert cmd[cmd.index("--worker") + 1] == "timm-erf"


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("--python", "timm", "FRAMEWORK=PATH"),
        ("--python", "pytorch=/usr/bin/python3", "FRAMEWORK=PATH"),
        ("--python", "timm=/nonexistent/python", "not an executable"),
        ("--frameworks", "big_vision@1", "optionally with @2"),
        ("--frameworks", "big_vision@x", "optionally with @2"),
        ("--frameworks", "flax@2", "optionally with @2"),
        ("--frameworks", "ours-jax,ours-jax", "each worker once"),
    ],
)
def test_bad_worker_arguments_are_rejected(peers, flag, value, match):
    with pytest.raises(ValueError, match=match):
        peers.main(["--quick", flag, value])
