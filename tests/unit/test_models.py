"""Every network family on random input: right output shape, finite values; and save/load round trip."""

import numpy as np
import pytest
import torch

from components.config import default_params
from components.ml.models import ModelSpec, build_model, file_sha256, load_model, resolve_family, save_model
from components.ml.predictor import build_predictor
from components.ml.runtime import folded_for_inference
from components.ml.transforms import PreprocessError, Preprocessing, preprocess


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
    model = build_model(default_params(train={"model": {"family": family, "width": 8}}).train.model, input_shape, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_instance_input_norm_ignores_each_inputs_gain_and_offset_and_survives_save_load(tmp_path):
    cfg = default_params(train={"model": {"family": "resnet3d", "width": 8, "input_norm": "instance"}}).train.model
    spec = ModelSpec(cfg, (1, 4, 16, 16), ("neg", "pos"), Preprocessing((4, 16, 16), 1, 0.0, 255.0))
    torch.manual_seed(0)
    model = build_model(cfg, spec.input_shape, 2).eval()
    clips = torch.rand(2, *spec.input_shape)
    rescaled = clips * torch.tensor([3.0, 0.5]).view(2, 1, 1, 1, 1) + torch.tensor([0.2, -0.1]).view(2, 1, 1, 1, 1)
    plain = build_model(default_params(train={"model": {"family": "resnet3d", "width": 8}}).train.model, spec.input_shape, 2).eval()
    with torch.no_grad():
        assert torch.allclose(model(clips), model(rescaled), atol=2e-3)  # up to the guard against a constant input
        assert not torch.allclose(plain(clips), plain(rescaled), atol=2e-2)  # what the layer is for
        save_model(model, spec, tmp_path)
        loaded, loaded_spec = load_model(tmp_path)
        assert loaded_spec.model.input_norm == "instance"
        assert torch.allclose(loaded(clips), model(clips))
    stored = spec.to_dict()
    del stored["model"]["input_norm"]  # a model stored before the setting existed
    assert ModelSpec.from_dict(stored).model.input_norm == "none"


@pytest.mark.parametrize(
    "model_cfg, input_shape",
    [
        ({"family": "resnet"}, (1, 28, 28)),
        ({"family": "resnet3d", "input_norm": "instance"}, (1, 8, 16, 16)),
        ({"family": "cnn_rnn"}, (1, 6, 16, 16)),
        ({"family": "frame_cnn"}, (1, 6, 16, 16)),
    ],
)
def test_folding_batchnorm_removes_it_and_keeps_the_outputs(model_cfg, input_shape):
    torch.manual_seed(0)
    cfg = default_params(train={"model": {**model_cfg, "width": 8}}).train.model
    members = [build_model(cfg, input_shape, num_classes=3) for _ in range(2)]
    for norm in (m for member in members for m in member.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.data.uniform_(0.5, 2)
    model = build_predictor(members, len(input_shape) - 1, [-1], np.array([0.2, -0.1, 0.0]), 1.3)  # ensemble, flips, prior
    x = torch.randn(3, *input_shape)
    folded, done = folded_for_inference(model, x[:2])
    assert done and folded is not model
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_a_model_fx_cannot_trace_is_served_unfolded():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.norm(self.conv(x))
            return y.mean(dim=(2, 3)) if x.sum() > 0 else -y.mean(dim=(2, 3))  # control flow on the data

    model = Branchy()
    assert folded_for_inference(model, torch.randn(2, 1, 8, 8)) == (model, False)


def test_auto_family_follows_dimensions():
    assert resolve_family(default_params().train.model, (1, 28, 28)) == "resnet"
    assert resolve_family(default_params().train.model, (1, 28, 28, 28)) == "resnet3d"
    with pytest.raises(ValueError, match="needs 3D input"):
        resolve_family(default_params(train={"model": {"family": "cnn_rnn"}}).train.model, (1, 28, 28))


def test_save_load_round_trip_checks_sha(tmp_path):
    spec = ModelSpec(default_params(train={"model": {"width": 8}}).train.model, (1, 16, 16), ("neg", "pos"), Preprocessing((16, 16), 1, 0.0, 255.0))
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


@pytest.mark.parametrize(
    ("shape", "spatial_size", "channels"),
    [((64, 64), (64, 64), 1), ((100, 90), (64, 64), 1), ((40, 50, 3), (32, 32), 3), ((20, 30, 30), (16, 28, 28), 1)],
)
def test_preprocess_equals_the_monai_window_and_resize(shape, spatial_size, channels):
    # The numpy window (and skipping an identity resize) must give MONAI's ScaleIntensityRange + Resize exactly.
    from monai.transforms import Compose, Resize, ScaleIntensityRange

    spec = Preprocessing(spatial_size, channels, lower=-160.0, upper=240.0)
    image = np.random.default_rng(1).uniform(-400, 500, shape).astype(np.float32)
    arr = np.moveaxis(image, -1, 0) if channels == 3 else image[np.newaxis]
    reference = Compose(
        [ScaleIntensityRange(a_min=-160.0, a_max=240.0, b_min=0.0, b_max=1.0, clip=True), Resize(spatial_size, mode="area")]
    )(arr)
    np.testing.assert_array_equal(preprocess(image, spec), np.asarray(reference))


@pytest.mark.parametrize("depth", [10, 18])
def test_resnet_depths_and_3d_volumes(depth):
    cfg = default_params(train={"model": {"family": "auto", "width": 4, "depth": depth}}).train.model
    model = build_model(cfg, (1, 8, 16, 16), num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 16, 16)).shape == (2, 2)
    deeper = sum(p.numel() for p in build_model(cfg.model_copy(update={"depth": 34}), (1, 16, 16), 2).parameters())
    assert deeper > sum(p.numel() for p in build_model(cfg, (1, 16, 16), 2).parameters())


def _augment(images, **changes):
    from components.ml.transforms import BatchAugmentation

    cfg = default_params(train={"augment": changes}).train.augment
    return BatchAugmentation(cfg, images.ndim - 2, torch.Generator().manual_seed(0))(images)


def test_augmentation_keeps_shape_and_repeats_with_the_seed():
    for shape in [(16, 1, 20, 20), (4, 1, 6, 12, 12)]:
        x = torch.rand(shape)
        out = _augment(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert torch.equal(out, _augment(x)) and not torch.equal(out, x)
    assert torch.equal(_augment(x, enabled=False), x)


def test_identity_affine_resamples_exactly():
    x = torch.rand(8, 1, 12, 12)
    out = _augment(x, rotate_degrees=0, zoom=0, translate=0, affine_probability=1.0, flip_axes=(), noise_std=0, contrast=0)
    assert torch.allclose(out, x, atol=1e-5)


def test_temporal_jitter_resamples_frames_of_clips_in_time_order_only():
    from components.ml.transforms import BatchAugmentation

    frames = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(64, 1, 10, 3, 3).clone()  # each frame holds its index
    cfg = default_params(train={"augment": {"affine_probability": 0, "flip_axes": (), "noise_std": 0, "contrast": 0,
                                            "temporal_jitter": 1.0}}).train.augment
    out = BatchAugmentation(cfg, 3, torch.Generator().manual_seed(0), clip=True)(frames)
    taken = out[:, 0, :, 0, 0]
    assert torch.equal(out, taken.view(64, 1, 10, 1, 1).expand_as(out))  # whole frames move, never mixed
    assert (taken.diff(dim=1) >= 0).all() and ((taken - torch.arange(10.0)).abs() <= 1).all()
    assert not torch.equal(out, frames)
    volume = BatchAugmentation(cfg, 3, torch.Generator().manual_seed(0))(frames)  # depth is not time
    assert torch.equal(volume, frames)


def test_flips_mirror_some_images_and_leave_the_others():
    x = torch.rand(32, 1, 8, 8)
    out = _augment(x, affine_probability=0, noise_std=0, contrast=0, flip_axes=(-1,))
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0 < sum(mirrored) < len(x)


def test_separable_volume_resample_matches_trilinear_affine():
    """In-plane bilinear on the slices, then linear along depth: MONAI's trilinear AffineTransform,
    also for mirrored matrices, shifts past the border and thin volumes."""
    from components.ml.transforms import BatchAugmentation

    aug = BatchAugmentation(default_params().train.augment, 3, torch.Generator().manual_seed(0))
    for shape in [(6, 1, 12, 16, 16), (3, 2, 5, 9, 7), (2, 1, 1, 8, 8)]:
        x = torch.rand(shape)
        theta = aug.affine_matrices(shape[0])
        theta[:, 0, 3] *= 20  # depth shifts far past the border
        theta[0, :, 0] *= -1  # a depth flip folded into the matrix
        theta[-1, :, 2] *= -1  # a left-right one
        assert torch.allclose(aug.transform(x, theta), aug.resample(x, theta), atol=1e-5)


def test_flips_of_resampled_images_are_folded_into_their_matrices():
    x = torch.rand(32, 1, 6, 10, 10)
    out = _augment(x, rotate_degrees=0, zoom=0, translate=0, affine_probability=1.0, noise_std=0, contrast=0, flip_axes=(0, -1))
    ways = [x, x.flip(2), x.flip(4), x.flip(2).flip(4)]
    taken = [[torch.allclose(o, w[i], atol=1e-5) for w in ways].index(True) for i, o in enumerate(out)]
    assert set(taken) == {0, 1, 2, 3}  # every image unchanged or mirrored, each combination drawn


def test_a_clips_spatial_change_never_blends_its_frames():
    """Rotation, zoom and shift act in-plane on every frame alike; time moves by whole frames only."""
    from components.ml.transforms import BatchAugmentation

    frames = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(32, 1, 10, 8, 8).clone()  # each frame holds its index
    cfg = default_params(train={"augment": {"affine_probability": 1.0, "noise_std": 0, "contrast": 0, "temporal_jitter": 0.0,
                                            "flip_axes": (-1,)}}).train.augment
    aug = BatchAugmentation(cfg, 3, torch.Generator().manual_seed(0), clip=True)
    assert torch.allclose(aug(frames), frames, atol=1e-5)  # a constant frame resampled in-plane stays itself
    theta = aug.affine_matrices(32)
    assert torch.equal(theta[:, 0], torch.tensor([1.0, 0, 0, 0]).expand(32, 4))
    volume = BatchAugmentation(cfg, 3, torch.Generator().manual_seed(0))(frames)  # a volume's depth is zoomed and shifted
    assert not torch.allclose(volume, frames, atol=1e-3)
