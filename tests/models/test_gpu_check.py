"""bench/gpu_check.py runs (a CPU dry run of the toy flavour; the real check needs a GPU)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_reports_step_time_and_tokens_per_second():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--device", "cpu", "--flavour", "toy", "--frames", "9", "--size", "32", "32",
                    "--steps", "1", "--text-len", "4", "--dtype", "fp32"])
    assert out["video_tokens"] == 3 * 2 * 2 and out["reference_tokens"] == 4
    assert out["step_s"] > 0 and out["tokens_per_s"] > 0 and out["loss"] > 0
    assert out["causal_cache_max_abs_diff"] <= 1e-5 and out["causal_fps"] > 0 and out["causal_chunk"] == 3
