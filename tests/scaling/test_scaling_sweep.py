"""The sweep's plumbing on the 2-run grid: runs.jsonl, resume, figure."""

import json
import os

import keras
import pytest

from keras_scalevit.scaling import sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "jax",
        reason="The sweep's plumbing is backend-neutral and trains through "
        "keras_scalevit.train.main, which tests/test_train.py covers per backend; "
        "run once, on JAX.",
    ),
]


def test_quick_grid_records_resumes_and_plots(tmp_path, capsys):
    workdir = str(tmp_path)
    sweep.main(["--workdir", workdir, "--grid", "quick"])
    path = os.path.join(workdir, "runs.jsonl")
    with open(path) as f:
        first = f.read()
    runs = [json.loads(line) for line in first.splitlines()]
    assert [r["name"] for r in runs] == ["w32d1_s10", "w32d1_s20"]
    # 16 tokens (8x8 digits, patch 2), D=32, M=128, one block; 2 FLOPs per MAC;
    # 3 x forward per example, batch 64.
    n, d, m = 16, 32, 128
    fwd = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d + 2 * n * 2 * 2 * 3 * d
    for r, steps in zip(runs, (10, 20), strict=True):
        assert r["flops_per_image"] == fwd
        assert r["compute"] == 3 * fwd * 64 * steps
        assert 0.0 <= r["error"] <= 1.0 and 0.0 <= r["fewshot_error"] <= 1.0
        # Each run's own workdir holds train.main's metrics; its final line is
        # the record's source.
        with open(os.path.join(workdir, "runs", r["name"], "metrics.jsonl")) as f:
            final = json.loads(f.read().splitlines()[-1])
        assert final["step"] == steps
        assert r["error"] == pytest.approx(1.0 - final["val_prec@1"])
    with open(os.path.join(workdir, "scaling.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    # Resume: both runs are skipped, runs.jsonl is unchanged.
    sweep.main(["--workdir", workdir, "--grid", "quick"])
    out = capsys.readouterr().out
    assert out.count("skipped") == 2
    with open(path) as f:
        assert f.read() == first


def test_fit_runs_per_size_and_frontier():
    law = lambda c: 0.4 * (c + 1e9) ** -0.3 + 0.02  # noqa: E731
    runs = [
        dict(size=s, compute=c * k, error=law(c * k) + floor)
        for s, k, floor in (("small", 1.0, 0.05), ("big", 8.0, 0.0))
        for c in (1e9, 1e10, 1e11, 1e12)
    ]
    fits = sweep.fit_runs(runs)
    assert set(fits) == {"small", "big", "frontier"}
    assert fits["big"].b == pytest.approx(0.3, rel=1e-4)
    assert fits["small"].c == pytest.approx(0.07, rel=1e-4)
    # Too few points: no fit rather than an error.
    assert sweep.fit_runs(runs[:2]) == {}
