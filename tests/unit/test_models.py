"""Every network family on random input: right output shape, finite values; and save/load round trip."""

import numpy as np
import pytest
import torch

from components.config import ModelConfig
from components.models import ModelSpec, build_model, file_sha256, load_model, resolve_family, save_model
from components.transforms import Preprocessing, PreprocessError, preprocess


@pytest.mark.parametrize(
    "family, input_shape",
    [
        ("resnet", (1, 28, 28)),
        ("resnet", (3, 64, 64)),
        ("densenet", (1, 28, 28)),
        ("efficientnet", (3, 28, 28)),
        ("resnet3d", (1, 16, 28, 28)),
        ("cnn_rnn", (1, 8, 28, 28)),
    ],
)
def test_family_forward(family, input_shape):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, width=8), input_shape, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_auto_family_follows_dimensions():
    assert resolve_family(ModelConfig(), (1, 28, 28)) == "resnet"
    assert resolve_family(ModelConfig(), (1, 28, 28, 28)) == "resnet3d"
    with pytest.raises(ValueError, match="needs 3D input"):
        resolve_family(ModelConfig(family="cnn_rnn"), (1, 28, 28))


def test_save_load_round_trip_checks_sha(tmp_path):
    spec = ModelSpec(ModelConfig(width=8), (1, 16, 16), ("neg", "pos"), Preprocessing((16, 16), 1, 0.0, 255.0))
    model = build_model(spec.model, spec.input_shape, 2).eval()
    weights = save_model(model, spec, tmp_path)
    loaded, loaded_spec = load_model(tmp_path, expected_sha256=file_sha256(weights))
    x = torch.randn(1, 1, 16, 16)
    assert loaded_spec == spec
    assert torch.allclose(loaded(x), model(x))
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path, expected_sha256="0" * 64)


def test_preprocess_scales_resizes_and_checks_shape():
    spec = Preprocessing((8, 8), 1, lower=-160.0, upper=240.0)
    out = preprocess(np.full((16, 16), 40.0, np.float32), spec)
    assert out.shape == (1, 8, 8) and np.allclose(out, 0.5)
    assert preprocess(np.full((16, 16), -1000.0), spec).max() == 0.0  # clipped below the window
    with pytest.raises(PreprocessError, match="expected 1 channel"):
        preprocess(np.zeros((16, 16, 3)), spec)
    with pytest.raises(PreprocessError, match="expected a 2D image"):
        preprocess(np.zeros((4, 16, 16, 2)), spec)
    with pytest.raises(PreprocessError, match="non-finite"):
        preprocess(np.full((16, 16), np.nan), spec)
