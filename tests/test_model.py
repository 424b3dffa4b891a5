"""The U-Net: shapes, the tutorial's parameter count, unique names, exportable normalisation."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from ms_ddpm.runtime.config import ModelConfig
from ms_ddpm.runtime.errors import ToolkitError
from ms_ddpm.train.model import ChannelLayerNorm, GroupNorm, build_unet, count_parameters


@pytest.mark.parametrize("config", [
    ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2)),
    ModelConfig(image_size=16, channels=3, dim=12, dim_mults=(1, 2, 4)),
    ModelConfig(image_size=8, channels=1, dim=8, dim_mults=(1, 2), out_dim=2, init_dim=6),
])
def test_unet_output_shape(config):
    net = build_unet(config)
    x = Tensor(np.random.default_rng(0).standard_normal((3, config.channels, config.image_size, config.image_size), dtype=np.float32))
    out = net(x, Tensor(np.array([0, 1, 2], np.int32)))
    assert out.shape == (3, config.out_dim or config.channels, config.image_size, config.image_size)
    assert np.all(np.isfinite(out.asnumpy()))


def test_tutorial_size_has_the_tutorials_parameter_count_and_unique_names():
    net = build_unet(ModelConfig())
    assert count_parameters(net) == 2_992_180
    names = [p.name for p in net.trainable_params()]
    assert len(names) == len(set(names))
    assert "downs.0.0.mlp.1.weight" in names and "ups.0.0.mlp.1.weight" in names


def test_image_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(ToolkitError, match="not divisible by 4"):
        build_unet(ModelConfig(image_size=30, dim_mults=(1, 2, 4)))


@pytest.mark.parametrize("groups,channels", [(1, 6), (2, 6), (3, 6)])
def test_group_norm_decomposition_matches_nn_group_norm(groups, channels):
    rng = np.random.default_rng(groups)
    x = Tensor(rng.standard_normal((4, channels, 5, 5), dtype=np.float32) * 3 + 1)
    ours, reference = GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
    gamma, beta = rng.standard_normal(channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    for layer in (ours, reference):
        layer.gamma.set_data(Tensor(gamma))
        layer.beta.set_data(Tensor(beta))
    diff = np.abs(ours(x).asnumpy() - reference(x).asnumpy()).max()
    assert diff < 2e-5, diff


def test_channel_layer_norm_uses_the_biased_variance():
    x = np.random.default_rng(0).standard_normal((2, 5, 3, 3)).astype(np.float32)
    expected = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True, ddof=0) + 1e-5)
    assert np.allclose(ChannelLayerNorm(5)(Tensor(x)).asnumpy(), expected, atol=1e-5)


def test_batch_size_does_not_change_per_sample_results():
    """Every reshape is batch-agnostic: sample i gives the same eps alone or inside a batch."""
    ms.set_seed(1)
    net = build_unet(ModelConfig(image_size=8, dim=8, dim_mults=(1, 2)))
    x = np.random.default_rng(2).standard_normal((5, 1, 8, 8), dtype=np.float32)
    t = np.array([0, 3, 5, 7, 9], np.int32)
    batched = net(Tensor(x), Tensor(t)).asnumpy()
    single = net(Tensor(x[2:3]), Tensor(t[2:3])).asnumpy()
    assert np.allclose(batched[2:3], single, atol=1e-5)
