"""tools/benchmark.py: the SDPA FLOP handle, the METER-style baseline, and the `backbone`, `dcn`, `lvis` and
`throughput` subcommands end to end on tiny models at small sizes (every stdout line is a JSON row)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "backbone" / "FIBER-tiny.yaml"
TINY_GROUNDING = REPO / "configs" / "fiber_shapes" / "fiber_tiny_grounding.yaml"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fiber_benchmark", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = _load_benchmark()


class _Attention(nn.Module):
    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value)


def test_sdpa_handle_matches_hand_count():
    batch, heads, length, source, dim, value_dim = 2, 4, 10, 7, 8, 8
    inputs = (torch.randn(batch, heads, length, dim), torch.randn(batch, heads, source, dim),
              torch.randn(batch, heads, source, value_dim))
    analysis = benchmark.flop_analysis(_Attention(), inputs)
    # Q K^T: B*H*L*S*D multiply-adds; P V: B*H*L*S*Dv.
    assert analysis.total() == batch * heads * length * source * (dim + value_dim) == 8960
    assert not analysis.unsupported_ops()
    assert analysis.by_operator() == {"scaled_dot_product_attention": 8960}


def test_sdpa_handle_broadcasts_leading_dims_and_value_dim():
    # Swin's layout: [B, windows, heads, N, D] queries; keys shared over the batch (broadcast); Dv != Dqk.
    query, key, value = torch.randn(2, 3, 4, 5, 8), torch.randn(1, 3, 4, 6, 8), torch.randn(1, 3, 4, 6, 16)
    analysis = benchmark.flop_analysis(_Attention(), (query, key, value))
    assert analysis.total() == 2 * 3 * 4 * 5 * 6 * (8 + 16)


def test_fvcore_skips_sdpa_without_the_handle():
    from fvcore.nn import FlopCountAnalysis

    inputs = tuple(torch.randn(2, 4, 10, 8) for _ in range(3))
    analysis = FlopCountAnalysis(_Attention(), inputs).unsupported_ops_warnings(False)
    assert analysis.total() == 0 and "aten::scaled_dot_product_attention" in analysis.unsupported_ops()


@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)
    return benchmark.build_backbone(TINY).eval()


def test_meter_baseline_output_shapes(tiny_backbone):
    meter = benchmark.MeterBaseline.for_backbone(tiny_backbone).eval()
    text = tiny_backbone.text.model.config
    assert len(meter.fusion.image_layers) == len(meter.fusion.text_layers) == tiny_backbone.num_fused == 3
    images = torch.randn(2, 3, 64, 96)
    input_ids = torch.randint(3, text.vocab_size, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        outputs = meter(images, input_ids, attention_mask)
        unfused = benchmark.BackboneForward(tiny_backbone, "off")(images, input_ids, attention_mask)
    shapes = [tuple(output.shape) for output in outputs]
    hidden = text.hidden_size
    assert shapes == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3), (2, 12, hidden), (2, 6, hidden), (2, 12, hidden)]
    for got, expected in zip(outputs[:4], unfused):  # METER reads the unfused encoders
        torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(output).all() for output in outputs)


def test_meter_fusion_at_fiber_b_dims_is_meter():
    fusion = benchmark.MeterFusion(image_dim=1024, text_dim=768)
    layer = fusion.image_layers[0]
    assert len(fusion.image_layers) == len(fusion.text_layers) == 6
    assert fusion.image_proj.in_features == 1024 and fusion.image_proj.out_features == 768
    assert layer.self_attention.num_heads == layer.cross_attention.num_heads == 12
    assert layer.intermediate.out_features == 3072
    image, text = fusion(torch.randn(2, 9, 1024), torch.randn(2, 5, 768), torch.ones(2, 5, dtype=torch.long))
    assert image.shape == (2, 9, 768) and text.shape == (2, 5, 768)


def test_lower_forward_is_part_of_the_full_forward(tiny_backbone):
    inputs = benchmark.make_inputs((64, 96), 12, 1, 1000, 32, torch.device("cpu"))
    lower = benchmark.count_flops(benchmark.LowerForward(tiny_backbone), inputs)["total"]
    full = benchmark.count_flops(benchmark.BackboneForward(tiny_backbone, "on"), inputs)["total"]
    assert 0 < lower < full


def test_text_len_defaults_and_size_parsing():
    assert benchmark.parse_size("800x1333") == (800, 1333)
    assert benchmark.default_text_len((384, 384)) == 40 and benchmark.default_text_len((800, 1333)) == 256
    with pytest.raises(SystemExit):
        benchmark.build_parser().parse_args(["backbone", "--sizes", "800by1333"])


def run_benchmark(*args: str) -> list[dict]:
    """tools/benchmark.py ARGS in a subprocess -> its stdout rows (every line must be one JSON object)."""
    command = [sys.executable, str(REPO / "tools" / "benchmark.py"), *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-3000:]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def rows():
    parsed = run_benchmark("backbone", "--config-file", TINY, "--sizes", "64x96", "--text-len", "12", "--repeats", "1",
                           "--warmup", "0", "--memory-size", "64x96", "--memory-batch", "2", "--memory-jobs", "3",
                           "--device", "cpu")
    return {row["metric"]: row for row in parsed}


def test_cli_rows_are_complete(rows):
    assert set(rows) == {"flops", "latency", "memory"}
    for row in rows.values():
        assert row["bench"] == "backbone" and row["model"] == "FIBER-tiny" and row["device"] == "cpu"
        assert {"size", "text_len", "batch"} <= set(row)
    assert rows["flops"]["size"] == "64x96" and rows["flops"]["text_len"] == 12 and rows["flops"]["batch"] == 1
    assert rows["memory"]["batch"] == 2


def test_cli_flops(rows):
    flops = rows["flops"]
    assert flops["fusion_on"] > flops["fusion_off"] > 0
    assert flops["meter"] > flops["fusion_off"]
    assert 0 < flops["lower_share_of_fusion_on"] < 1 and 0 < flops["lower"] < flops["fusion_on"]
    assert math.isclose(flops["fusion_fiber"], flops["fusion_on"] - flops["fusion_off"], abs_tol=2e-3)
    assert math.isclose(flops["fusion_meter"], flops["meter"] - flops["fusion_off"], abs_tol=2e-3)
    assert flops["fusion_ratio_fiber_over_meter"] > 0 and flops["total_ratio_fiber_over_meter"] > 0
    # The SDPA handle counted attention, and more of it with fusion on.
    assert flops["attention_sdpa"]["fusion_on"] > flops["attention_sdpa"]["fusion_off"] > 0
    assert "aten::scaled_dot_product_attention" not in flops["unsupported_ops"]
    # Only cheap elementwise/indexing ops may remain uncounted.
    assert not {"aten::linear", "aten::matmul", "aten::bmm", "aten::baddbmm", "aten::_convolution"} & set(
        flops["unsupported_ops"])


def test_cli_latency(rows):
    latency = rows["latency"]
    for variant in ("fusion_on", "fusion_off", "meter"):
        assert latency[f"{variant}_median"] > 0 and 0 < latency[f"{variant}_min"] <= latency[f"{variant}_median"]
    for prefix in ("", "min_"):
        assert latency[f"{prefix}ratio_fusion_on_over_off"] > 0 and latency[f"{prefix}ratio_meter_over_off"] > 0
        assert latency[f"{prefix}ratio_fusion_on_over_meter"] > 0


def test_cli_memory(rows):
    memory = rows["memory"]
    assert memory["size"] == "64x96" and memory["unit"] == "MiB"
    assert memory["fusion_on"] > 0 and memory["meter"] > 0 and memory["fusion_off"] > 0
    assert memory["ratio_fusion_on_over_meter"] > 0


def test_dyhead_level_shapes_at_800x1333():
    # 800x1333 is padded to 800x1344; P3-P5 by stride, P6/P7 by 3x3 stride-2 convs (ceil halving).
    assert benchmark.dyhead_level_shapes((800, 1333)) == [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]


def test_dcn_cli_rows_match_torchvision():
    rows = run_benchmark("dcn", "--size", "96x128", "--channels", "8", "--repeats", "1", "--warmup", "0",
                         "--threads", "1")
    assert [row["level"] for row in rows] == ["p3", "p4", "p5", "p6", "p7"]
    assert [(row["height"], row["width"]) for row in rows] == [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    for row in rows:
        assert row["max_abs_difference"] < 1e-4  # ours computes what torchvision computes, gradients included
        assert set(row["max_abs_grad_difference"]) == {"x", "offset", "mask", "weight", "bias"}
        assert max(row["max_abs_grad_difference"].values()) < 1e-3
        for suffix in ("", "_train"):  # forward, forward+backward: the three ratios come from the same times
            assert min(row[f"{name}{suffix}_ms"] for name in ("plain", "torchvision", "ours")) > 0
            ratios = row[f"torchvision_over_ours{suffix}"] * row[f"ours_over_plain{suffix}"]
            assert ratios == pytest.approx(row[f"torchvision_over_plain{suffix}"], rel=0.01)
        assert row["threads"] == 1 and row["channels"] == 8


def test_lvis_cli_rows_are_consistent():
    rows = run_benchmark("lvis", "--config-file", TINY_GROUNDING, "--names-tokenizer", "--size", "64x96",
                         "--num-chunks", "3", "--chunk-batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
                         "--device", "cpu")
    chunks, (summary,) = rows[:-1], rows[-1:]
    assert [row["metric"] for row in chunks] == ["chunk"] * 3 and summary["metric"] == "latency"
    for row in rows:
        assert row["bench"] == "lvis" and row["model"] == "fiber_tiny_grounding" and row["threads"] == 1
        assert row["size"] == "64x96" and row["input_size"] == "64x96" and row["repeats"] == 1
    parts = ("text_lower_ms", "upper_ms", "fpn_ms", "head_ms")
    for index, row in enumerate(chunks):
        assert row["chunk"] == index and row["names"] == 40 and 40 < row["tokens"] <= 256
        assert all(row[part] > 0 for part in parts)
    # 1203 LVIS names in chunks of 40: 31 prompts, the first 3 timed.
    assert summary["all_chunks"] == 31 and summary["num_chunks"] == 3 and summary["names"] == 120
    assert summary["chunk_size"] == 40 and summary["chunk_batch"] == 2
    assert summary["tokens_min"] <= summary["tokens_mean"] <= summary["tokens_max"]
    assert summary["tokens_max"] == max(row["tokens"] for row in chunks)
    for key in ("naive_ms", "ours_ms", "floor_ms", "image_lower_ms", *parts):
        assert summary[key] > 0, key
    for part in parts:  # the summary's parts are the sums over the chunks
        assert summary[part] == pytest.approx(sum(row[part] for row in chunks), abs=0.03)
    floor = summary["image_lower_ms"] + summary["upper_ms"] + summary["fpn_ms"] + summary["head_ms"]
    assert summary["floor_ms"] == pytest.approx(floor, abs=0.05)
    assert summary["ours_over_floor"] == pytest.approx(summary["ours_ms"] / summary["floor_ms"], rel=5e-3)
    assert summary["naive_over_ours"] == pytest.approx(summary["naive_ms"] / summary["ours_ms"], rel=5e-3)


def test_throughput_cli_rows_are_consistent():
    # 5 images: batches of 4 are 4 + 1 images. The predictor resizes to the test size, kept at 64x96 here.
    rows = run_benchmark("throughput", "--size", "64x96", "--images", "5", "--batch-sizes", "1,4", "--repeats", "1",
                         "--warmup", "0", "--threads", "1", "--device", "cpu", "--names-tokenizer", "--opts",
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96")
    batches, (summary,) = rows[:-1], rows[-1:]
    assert [row["metric"] for row in batches] == ["batch", "batch"] and summary["metric"] == "summary"
    for row in rows:
        assert row["bench"] == "throughput" and row["model"] == "fiber_tiny_grounding" and row["device"] == "cpu"
        assert row["size"] == "64x96" and row["input_size"] == "64x96" and row["threads"] == 1
        assert row["images"] == 5 and row["names"] == 48 and row["chunks"] == 1 and 48 < row["tokens"] <= 256
    assert [(row["batch_size"], row["forwards"]) for row in batches] == [(1, 5), (4, 2)]
    for row in batches:
        assert set(row) >= {"seconds", "images_per_s", "ms_per_image"}
        assert row["images_per_s"] == pytest.approx(5 / row["seconds"], rel=1e-3)
        assert row["ms_per_image"] == pytest.approx(1e3 / row["images_per_s"], rel=1e-3)
    rates = {str(row["batch_size"]): row["images_per_s"] for row in batches}
    assert summary["images_per_s"] == rates
    assert summary["ratio_batch4_over_batch1"] == pytest.approx(rates["4"] / rates["1"], rel=1e-3)
    assert "trained on the FIBER-Shapes" in summary["tokenizer"]
