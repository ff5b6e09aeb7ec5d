"""fiber_d2.benchmark: the SDPA FLOP handle, the METER-style baseline, the Grounding DINO sizing, every benchmark's
rows on tiny models at small sizes (values and the relations between fields), and tools/benchmark.py's command line
(JSON rows on stdout, one-line config errors)."""
import argparse
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch import nn

from fiber_d2.benchmark import backbone, dcn, launches, latency, lvis, throughput, train
from fiber_d2.benchmark.common import BenchmarkError, load_config
from fiber_d2.benchmark.flops import count_flops, flop_analysis
from fiber_d2.benchmark.meter import MeterBaseline, MeterFusion
from fiber_d2.config import ConfigError
from fiber_d2.data.datasets.fiber_shapes import register_fiber_shapes
from fiber_d2.data.prompts import PromptChunk
from fiber_d2.data.shapes.generate import generate_fiber_shapes

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "backbone" / "FIBER-tiny.yaml"
TINY_GROUNDING = REPO / "configs" / "fiber_shapes" / "fiber_tiny_grounding.yaml"
TINY_STAGE1 = REPO / "configs" / "fiber_shapes" / "fiber_tiny_grounding_stage1.yaml"


def run_rows(module, *argv) -> list[dict]:
    """The rows `module.run` emits for the command line `argv` (each must survive a JSON round trip)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    rows: list[dict] = []
    module.run(parser.parse_args([str(arg) for arg in argv]), rows.append)
    assert json.loads(json.dumps(rows)) == rows
    return rows


class _Attention(nn.Module):
    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value)


def test_sdpa_handle_matches_hand_count():
    batch, heads, length, source, dim, value_dim = 2, 4, 10, 7, 8, 8
    inputs = (torch.randn(batch, heads, length, dim), torch.randn(batch, heads, source, dim),
              torch.randn(batch, heads, source, value_dim))
    analysis = flop_analysis(_Attention(), inputs)
    # Q K^T: B*H*L*S*D multiply-adds; P V: B*H*L*S*Dv.
    assert analysis.total() == batch * heads * length * source * (dim + value_dim) == 8960
    assert not analysis.unsupported_ops()
    assert analysis.by_operator() == {"scaled_dot_product_attention": 8960}


def test_sdpa_handle_broadcasts_leading_dims_and_value_dim():
    # Swin's layout: [B, windows, heads, N, D] queries; keys shared over the batch (broadcast); Dv != Dqk.
    query, key, value = torch.randn(2, 3, 4, 5, 8), torch.randn(1, 3, 4, 6, 8), torch.randn(1, 3, 4, 6, 16)
    analysis = flop_analysis(_Attention(), (query, key, value))
    assert analysis.total() == 2 * 3 * 4 * 5 * 6 * (8 + 16)


def test_fvcore_skips_sdpa_without_the_handle():
    from fvcore.nn import FlopCountAnalysis

    inputs = tuple(torch.randn(2, 4, 10, 8) for _ in range(3))
    analysis = FlopCountAnalysis(_Attention(), inputs).unsupported_ops_warnings(False)
    assert analysis.total() == 0 and "aten::scaled_dot_product_attention" in analysis.unsupported_ops()


@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)
    return backbone.build_backbone(str(TINY)).eval()


def test_meter_baseline_output_shapes(tiny_backbone):
    meter = MeterBaseline.for_backbone(tiny_backbone).eval()
    text = tiny_backbone.text.model.config
    assert len(meter.fusion.image_layers) == len(meter.fusion.text_layers) == tiny_backbone.num_fused == 3
    images = torch.randn(2, 3, 64, 96)
    input_ids = torch.randint(3, text.vocab_size, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        outputs = meter(images, input_ids, attention_mask)
        unfused = backbone.BackboneForward(tiny_backbone, "off")(images, input_ids, attention_mask)
    shapes = [tuple(output.shape) for output in outputs]
    hidden = text.hidden_size
    assert shapes == [(2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3), (2, 12, hidden), (2, 6, hidden), (2, 12, hidden)]
    for got, expected in zip(outputs[:4], unfused):  # METER reads the unfused encoders
        torch.testing.assert_close(got, expected)
    assert all(torch.isfinite(output).all() for output in outputs)


def test_meter_fusion_at_fiber_b_dims_is_meter():
    fusion = MeterFusion(image_dim=1024, text_dim=768)
    layer = fusion.image_layers[0]
    assert len(fusion.image_layers) == len(fusion.text_layers) == 6
    assert fusion.image_proj.in_features == 1024 and fusion.image_proj.out_features == 768
    assert layer.self_attention.num_heads == layer.cross_attention.num_heads == 12
    assert layer.intermediate.out_features == 3072
    image, text = fusion(torch.randn(2, 9, 1024), torch.randn(2, 5, 768), torch.ones(2, 5, dtype=torch.long))
    assert image.shape == (2, 9, 768) and text.shape == (2, 5, 768)


def test_lower_forward_is_part_of_the_full_forward(tiny_backbone):
    inputs = backbone.make_inputs((64, 96), 12, 1, 1000, 32, torch.device("cpu"))
    lower = count_flops(backbone.LowerForward(tiny_backbone), inputs)["total"]
    full = count_flops(backbone.BackboneForward(tiny_backbone, "on"), inputs)["total"]
    assert 0 < lower < full


def test_text_len_defaults_and_size_parsing():
    parser = argparse.ArgumentParser()
    backbone.add_arguments(parser)
    assert parser.parse_args(["--sizes", "800x1333,64x96"]).sizes == [(800, 1333), (64, 96)]
    assert backbone.default_text_len((384, 384)) == 40 and backbone.default_text_len((800, 1333)) == 256
    with pytest.raises(SystemExit):
        parser.parse_args(["--sizes", "800by1333"])


def test_config_errors_are_config_errors(tmp_path):
    # fiber_d2.config.load_fiber_config words them (tests/test_architecture.py); the CLI prints them as one line.
    with pytest.raises(ConfigError) as error:
        load_config(str(TINY_GROUNDING), ["MODEL.NOPE", "1"])
    assert str(error.value) == "command-line override: Non-existent key: MODEL.NOPE"
    with pytest.raises(ConfigError) as error:
        load_config(str(tmp_path / "missing.yaml"))
    assert str(error.value) == f"config file '{tmp_path / 'missing.yaml'}' does not exist"


def test_option_errors_are_one_line(capsys):
    parser = argparse.ArgumentParser()
    backbone.add_arguments(parser)
    with pytest.raises(BenchmarkError) as error:
        backbone.run(parser.parse_args(["--sizes", "64x96,96x128,32x32", "--text-len", "12,16"]), print)
    assert str(error.value) == "--text-len gives 2 values for 3 sizes (give 1 or 1 per size)"
    parser = argparse.ArgumentParser()
    latency.add_arguments(parser)
    assert parser.parse_args(["--dtypes", "bf16"]).dtypes == ["bf16"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtypes", "fp32,fp16"])
    assert "argument --dtypes: 'fp32,fp16': use fp32 and/or bf16 (unknown: fp16)" in capsys.readouterr().err


def test_load_config_gives_random_weights_on_the_device():
    cfg = load_config(str(TINY_GROUNDING), ["MODEL.WEIGHTS", "some.pth"], "cpu")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.IMS_PER_BATCH == 4


@pytest.fixture(scope="module")
def backbone_rows():
    parsed = run_rows(backbone, "--config-file", TINY, "--sizes", "64x96", "--text-len", "12", "--repeats", "1",
                      "--warmup", "0", "--memory-size", "64x96", "--memory-batch", "2", "--memory-jobs", "3",
                      "--device", "cpu")
    return {row["metric"]: row for row in parsed}


def test_backbone_rows_are_complete(backbone_rows):
    assert set(backbone_rows) == {"flops", "latency", "memory"}
    for row in backbone_rows.values():
        assert row["bench"] == "backbone" and row["model"] == "FIBER-tiny" and row["device"] == "cpu"
        assert {"size", "text_len", "batch"} <= set(row)
    flops = backbone_rows["flops"]
    assert flops["size"] == "64x96" and flops["text_len"] == 12 and flops["batch"] == 1
    assert backbone_rows["memory"]["batch"] == 2 and backbone_rows["memory"]["text_len"] == 40


def test_backbone_flops(backbone_rows):
    flops = backbone_rows["flops"]
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


def test_backbone_latency(backbone_rows):
    row = backbone_rows["latency"]
    for variant in ("fusion_on", "fusion_off", "meter"):
        assert row[f"{variant}_median"] > 0 and 0 < row[f"{variant}_min"] <= row[f"{variant}_median"]
    # The ratios come from the unrounded times; the row's times are rounded to 0.01 ms (so +-0.005 ms each) and the
    # ratios to 4 decimals.
    def ratio_bounds(numerator: float, denominator: float) -> tuple[float, float]:
        return (numerator - 0.005) / (denominator + 0.005) - 5e-5, (numerator + 0.005) / (denominator - 0.005) + 5e-5

    for prefix, stat in (("", "median"), ("min_", "min")):
        for other in ("fusion_off", "meter"):
            low, high = ratio_bounds(row[f"fusion_on_{stat}"], row[f"{other}_{stat}"])
            assert low <= row[f"{prefix}ratio_fusion_on_over_{other.removeprefix('fusion_')}"] <= high


def test_backbone_memory(backbone_rows):
    memory = backbone_rows["memory"]
    assert memory["size"] == "64x96" and memory["unit"] == "MiB"
    assert memory["fusion_on"] > 0 and memory["meter"] > 0 and memory["fusion_off"] > 0
    assert memory["ratio_fusion_on_over_meter"] == pytest.approx(memory["fusion_on"] / memory["meter"], rel=1e-2)
    assert all(value > 0 for value in memory["rss_after_build_mib"].values())


def test_dyhead_level_shapes_at_800x1333():
    # 800x1333 is padded to 800x1344; P3-P5 by stride, P6/P7 by 3x3 stride-2 convs (ceil halving).
    assert dcn.dyhead_level_shapes((800, 1333)) == [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]


def test_dcn_rows_match_torchvision():
    rows = run_rows(dcn, "--size", "96x128", "--channels", "8", "--repeats", "1", "--warmup", "0", "--threads", "1")
    assert [row["level"] for row in rows] == ["p3", "p4", "p5", "p6", "p7"]
    assert [(row["height"], row["width"]) for row in rows] == [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    for row in rows:
        assert row["max_abs_difference"] < 1e-4  # ours computes what torchvision computes, gradients included
        assert set(row["max_abs_grad_difference"]) == {"x", "offset", "mask", "weight", "bias"}
        assert max(row["max_abs_grad_difference"].values()) < 1e-3
        for suffix in ("", "_train"):  # forward, forward+backward: the three ratios come from the same times
            assert min(row[f"{name}{suffix}_ms"] for name in ("plain", "torchvision", "ours")) > 0
            # Ratios are rounded to 3 decimals: a*b is off by at most 0.0005 * (a + b) (+ 0.0005 for the third).
            over_ours, over_plain = row[f"torchvision_over_ours{suffix}"], row[f"ours_over_plain{suffix}"]
            assert over_ours * over_plain == pytest.approx(
                row[f"torchvision_over_plain{suffix}"], abs=0.0005 * (over_ours + over_plain + 1) + 1e-6)
        assert row["threads"] == 1 and row["channels"] == 8


def test_lvis_rows_are_consistent():
    rows = run_rows(lvis, "--config-file", TINY_GROUNDING, "--names-tokenizer", "--size", "64x96", "--num-chunks", "3",
                    "--chunk-batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--device", "cpu")
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


def test_throughput_rows_are_consistent():
    # 5 images: batches of 4 are 4 + 1 images. The predictor resizes to the test size, kept at 64x96 here.
    rows = run_rows(throughput, "--size", "64x96", "--images", "5", "--batch-sizes", "1,4", "--repeats", "1",
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
        assert row["images_per_s"] == pytest.approx(5 / row["seconds"], rel=1e-3)
        assert row["ms_per_image"] == pytest.approx(1e3 / row["images_per_s"], rel=1e-3)
    rates = {str(row["batch_size"]): row["images_per_s"] for row in batches}
    assert summary["images_per_s"] == rates
    assert summary["ratio_batch4_over_batch1"] == pytest.approx(rates["4"] / rates["1"], rel=1e-3)
    assert "trained on the FIBER-Shapes" in summary["tokenizer"]


def test_grounding_dino_is_sized_from_our_config():
    config = latency.grounding_dino_config(load_config(str(TINY_GROUNDING)), num_queries=30, num_layers=2)
    assert config.backbone_config.embed_dim == 32 and list(config.backbone_config.depths) == [1, 1, 3, 1]
    assert list(config.backbone_config.num_heads) == [1, 2, 4, 8] and config.backbone_config.window_size == 7
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (
        128, 4, 4, 256)
    assert text.vocab_size == 1013  # our 1000, raised to hold BERT's "." (1012)
    assert (config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim) == (64, 512, 512)
    assert (config.encoder_layers, config.decoder_layers, config.num_queries, config.max_text_len) == (2, 2, 30, 256)


def test_grounding_dino_ids_follow_our_phrases():
    # <s> red circle . blue square </s>: labels at tokens 1-2 and 4-5.
    token_map = torch.zeros(2, 7, dtype=torch.bool)
    token_map[0, 1:3] = token_map[1, 4:6] = True
    chunk = PromptChunk("red circle. blue square", torch.arange(7), token_map, torch.tensor([0, 1]), ["a", "b"])
    ids = latency.grounding_dino_ids(chunk, torch.Generator().manual_seed(0))
    assert ids.shape == (7,) and ids[0] == 101 and ids[3] == 1012 and ids[6] == 102
    words = ids[[1, 2, 4, 5]]
    assert ((words > 102) & (words < 1012)).all()


def test_bf16_runs_under_cpu_autocast():
    seen = []
    record = lambda: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))  # noqa: E731
    latency.under_autocast(torch.device("cpu"), "bf16", record)()
    latency.under_autocast(torch.device("cpu"), "fp32", record)()
    assert seen[0] == (True, torch.bfloat16) and seen[1][0] is False


def test_latency_rows_are_consistent():
    rows = run_rows(latency, "--size", "64x96", "--queries", "30", "--gdino-layers", "2", "--repeats", "1",
                    "--warmup", "0", "--threads", "1", "--device", "cpu", "--names-tokenizer")
    forwards, (summary,) = rows[:-1], rows[-1:]
    assert [(row["variant"], row["dtype"]) for row in forwards] == [
        (model, dtype) for dtype in ("fp32", "bf16") for model in ("fiber", "fiber_network", "grounding_dino")]
    for row in rows:
        assert row["bench"] == "latency" and row["model"] == "fiber_tiny_grounding" and row["device"] == "cpu"
        assert row["size"] == row["input_size"] == "64x96" and row["batch"] == 1 and row["threads"] == 1
        assert row["chunks"] == 1 and 48 < row["tokens"][0] <= 256
    ms = {(row["variant"], row["dtype"]): row["median_ms"] for row in forwards}
    for row in forwards:
        assert 0 < row["min_ms"] <= row["median_ms"]
    params = {row["variant"]: row["params"] for row in forwards}
    assert params["fiber"] == params["fiber_network"] > 0 and params["grounding_dino"] > 0
    for dtype in ("fp32", "bf16"):
        for name in ("fiber", "fiber_network"):
            assert summary[f"{name}_over_grounding_dino_{dtype}"] == pytest.approx(
                ms[name, dtype] / ms["grounding_dino", dtype], rel=1e-3)
    for name in ("fiber", "fiber_network", "grounding_dino"):
        assert summary[f"{name}_bf16_over_fp32"] == pytest.approx(ms[name, "bf16"] / ms[name, "fp32"], rel=1e-3)
    assert summary["queries"] == 30 and summary["gdino_layers"] == 2


def test_launch_counts_count_calls_from_python_and_host_reads():
    x = torch.ones(4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            y = (x + 1) * 2  # add (lifting the 1 runs inside it) and mul
            y.sum().item()  # sum, and item with its host read inside
            torch.nonzero(x)  # a host read of its own
    assert launches.launch_counts(prof.events(), 2) == {
        "ops_per_forward": 5.0, "host_reads_per_forward": 2.0, "device_events_per_forward": None}


def test_launches_rows_are_consistent():
    rows = run_rows(launches, "--size", "64x96", "--repeats", "2", "--warmup", "1", "--threads", "1", "--device",
                    "cpu", "--top", "4")
    assert [row["dtype"] for row in rows] == ["fp32", "bf16"]
    for row in rows:
        assert row["bench"] == "launches" and row["model"] == "fiber_tiny_grounding" and row["device"] == "cpu"
        assert row["size"] == "64x96" and row["forwards"] == 2 and row["chunks"] == 1
        assert row["device_events_per_forward"] is None  # no CUDA events on CPU
        # every forward dispatches the same operators, so the per-forward counts are whole numbers
        assert row["ops_per_forward"] > 1000 and row["ops_per_forward"] == int(row["ops_per_forward"])
        assert row["host_reads_per_forward"] > 0 and row["host_reads_per_forward"] == int(row["host_reads_per_forward"])
        assert len(row["top"]) == 4 and all(calls > 0 for _, _, calls in row["top"])
        assert [ms for _, ms, _ in row["top"]] == sorted((ms for _, ms, _ in row["top"]), reverse=True)
    # CPU autocast casts inside the operators it wraps: bf16 calls the same operators from Python as fp32
    assert rows[0]["ops_per_forward"] == rows[1]["ops_per_forward"]
    assert rows[0]["host_reads_per_forward"] == rows[1]["host_reads_per_forward"]


@pytest.fixture(scope="module")
def shapes_datasets(tmp_path_factory):
    """A tiny FIBER-Shapes set registered under a fresh prefix: (prefix, its tokenizer directory)."""
    root = tmp_path_factory.mktemp("shapes") / "fiber_shapes"
    generate_fiber_shapes(root, seed=3, num_train=8, num_val=2, num_novel=2)
    prefix = f"bench_shapes_{uuid.uuid4().hex[:8]}"
    names = register_fiber_shapes(str(root), prefix=prefix)
    yield prefix, root / "tokenizer"
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_train_rows_are_consistent(shapes_datasets):
    prefix, tokenizer = shapes_datasets
    opts = ["DATASETS.TRAIN", f"('{prefix}_colorshape_train',)", "DATASETS.TEST", "()", "MODEL.FIBER.TOKENIZER",
            str(tokenizer), "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN",
            "(128,)", "INPUT.MAX_SIZE_TRAIN", "192"]
    rows = run_rows(train, "--config-file", TINY_STAGE1, "--iters", "2", "--warmup", "1", "--threads", "1",
                    "--device", "cpu", "--baseline-opts", "MODEL.FIBER.HEAD.NUM_CONVS", "1", "--opts", *opts)
    steps, (summary,) = rows[:-1], rows[-1:]
    assert [(row["variant"], row["mode"]) for row in steps] == [("ours", "loader"), ("ours", "fixed"),
                                                                ("baseline", "fixed")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    for row in rows:
        assert row["bench"] == "train" and row["model"] == "fiber_tiny_grounding_stage1" and row["device"] == "cpu"
        assert row["meta_architecture"] == "FiberGroundingDetector" and row["amp"] is False
        assert (row["batch"], row["workers"], row["warmup"], row["iters"], row["threads"]) == (2, 0, 1, 2, 1)
        assert row["opts"] == opts and row["baseline_opts"] == ["MODEL.FIBER.HEAD.NUM_CONVS", "1"]
        assert row["commit"] == commit.stdout.strip() and isinstance(row["modified"], list)
        assert 0 < row["pixels_per_image"] <= 128 * 192  # shorter side 128, longer side at most 192
        assert row["cpus"] >= 1
    for row in steps:
        assert 0 < row["step_ms_min"] <= row["step_ms"] and 0 <= row["data_ms"] <= row["step_ms"]
        assert row["cpu_ms"] > 0
        assert row["peak_memory_mib"] is None  # CUDA only
        assert row["images_per_s"] == pytest.approx(2 / (row["step_ms"] / 1e3), rel=1e-3)
    loader, fixed, baseline = steps
    assert fixed["data_ms"] <= 0.05 * fixed["step_ms"]  # replayed from memory
    assert baseline["params"] < fixed["params"] == loader["params"]  # one DyHead tower conv fewer
    assert summary["loader_over_fixed"] == pytest.approx(loader["step_ms"] / fixed["step_ms"], rel=1e-3)
    assert summary["ours_over_baseline"] == pytest.approx(fixed["step_ms"] / baseline["step_ms"], rel=1e-3)
    assert summary["ours_over_baseline_cpu"] == pytest.approx(fixed["cpu_ms"] / baseline["cpu_ms"], rel=1e-3)
    assert summary["ours_over_baseline_paired"] > 0 and summary["ours_over_baseline_cpu_paired"] > 0


def test_train_baseline_opts_may_override_amp():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--config-file", str(TINY_STAGE1), "--device", "cpu", "--amp", "--baseline-opts",
                              "SOLVER.AMP.ENABLED", "False", "--opts", "SOLVER.IMS_PER_BATCH", "2"])
    ours, baseline = train.model_configs(args)
    assert ours.SOLVER.AMP.ENABLED is True and baseline.SOLVER.AMP.ENABLED is False
    assert ours.SOLVER.IMS_PER_BATCH == baseline.SOLVER.IMS_PER_BATCH == 2
    args = parser.parse_args(["--config-file", str(TINY_STAGE1), "--device", "cpu", "--amp"])
    ours, baseline = train.model_configs(args)
    assert ours.SOLVER.AMP.ENABLED is baseline.SOLVER.AMP.ENABLED is True


def test_train_step_row_reports_the_largest_cuda_peak_in_mib():
    times = {"step": [0.3, 0.1, 0.2], "cpu": [0.2, 0.2, 0.4], "data": [0.0, 0.01, 0.02],
             "peak": [3 * 2**20, 5.5 * 2**20, 4 * 2**20]}
    row = train.step_row({"bench": "train"}, "ours", "fixed", times, batch=4, params=7)
    assert (row["step_ms"], row["step_ms_min"], row["cpu_ms"], row["data_ms"]) == (200.0, 100.0, 200.0, 10.0)
    assert row["images_per_s"] == 20.0 and row["peak_memory_mib"] == 5.5 and row["params"] == 7
    assert train.step_row({}, "ours", "fixed", {**times, "peak": []}, batch=4, params=7)["peak_memory_mib"] is None


def run_cli(*args: str, datasets: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if datasets:
        env["DETECTRON2_DATASETS"] = str(datasets)
    return subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_only_json_rows_on_stdout():
    proc = run_cli("dcn", "--size", "32x32", "--channels", "4", "--repeats", "1", "--warmup", "0", "--threads", "1",
                   "--skip-backward")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["level"] for row in rows] == ["p3", "p4", "p5", "p6", "p7"] and "done in" in proc.stderr


def test_cli_config_error_is_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("SOLVER:\n  IMS_PER_BATCH: [\n")
    proc = run_cli("train", "--config-file", config)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"benchmark.py: error: {config}: not valid YAML: while parsing a flow node expected the node content, but "
        f"found '<stream end>' in \"{config}\", line 3, column 1")


def test_cli_missing_dataset_is_one_line(tmp_path):
    proc = run_cli("train", "--config-file", TINY_STAGE1, "--iters", "1", "--warmup", "0", "--threads", "1",
                   "--device", "cpu", datasets=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    annotations = tmp_path / "fiber_shapes" / "annotations" / "instances_colorshape_train.json"
    last = proc.stderr.strip().splitlines()[-1]  # the dataset code words the rest: it names the dataset and file
    assert last.startswith("benchmark.py: error: dataset 'fiber_shapes_colorshape_train': ")
    assert str(annotations) in last


def test_gpu_script_runs_every_gpu_row_and_counts_failures(tmp_path):
    """tools/gpu_benchmarks.sh with a stand-in for Python that logs its arguments and fails the `lvis` runs."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho \'{{"bench": "x"}}\'\ncase "$2" in lvis) '
                    'echo "lvis broke" >&2; exit 1;; esac\n')
    fake.chmod(0o755)
    (tmp_path / "datasets" / "fiber_shapes").mkdir(parents=True)
    (tmp_path / "datasets" / "fiber_shapes" / "meta.json").write_text("{}")
    out = tmp_path / "rows"
    env = dict(os.environ, PYTHON=str(fake), SMOKE="1", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_benchmarks.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # the three lvis runs
    assert "lvis_fp32 failed: lvis broke" in proc.stdout and "3 failed" in proc.stdout
    lines = calls.read_text().splitlines()
    assert [line.split()[1] for line in lines] == [
        "latency", "launches", "lvis", "lvis", "lvis", "train", "train", "train", "train"]
    assert all(line.split()[0] == "tools/benchmark.py" and "--device cpu" in line for line in lines)
    assert "--size 64x96" in lines[0] and "--dtypes fp32,bf16" in lines[0] and "coco_zeroshot.yaml" in lines[0]
    assert "coco_zeroshot.yaml" in lines[1] and "--dtypes fp32,bf16" in lines[1] and "--repeats 1" in lines[1]
    assert lines[3].endswith("MODEL.FIBER.INFERENCE_DTYPE bfloat16") and "--chunk-batch" not in lines[3]
    assert lines[4].endswith("MODEL.FIBER.INFERENCE_DTYPE bfloat16") and "--chunk-batch 8" in lines[4]
    assert "--amp" in lines[6] and "--amp" in lines[8] and "--amp" not in lines[5] + lines[7]
    assert "fine_pretrain_goldg_o365.yaml" in lines[7] and "SOLVER.IMS_PER_BATCH 2" in lines[7]
    names = ["latency_fiber_b", "launches_fiber_b", "train_tiny_fp32", "train_tiny_amp", "train_fiber_b_fp32",
             "train_fiber_b_amp"]
    for name in names:
        assert (out / f"{name}.jsonl").read_text() == '{"bench": "x"}\n'
