"""sibnet.evaluation.batchnorm: re-estimating BatchNorm statistics with the final weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sibnet.errors import SibnetError
from sibnet.evaluation.batchnorm import recalibrate_batchnorm

torch.set_num_threads(1)


class Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": torch.zeros(2)}


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # stale statistics, as a training run would leave them
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-3, 3)
                m.running_var.uniform_(5, 9)
    return net


def test_statistics_are_those_of_the_images_under_the_final_weights():
    x = (torch.randn(24, 3, 8, 8) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
         + torch.tensor([0.3, -1.0, 2.0]).view(1, 3, 1, 1))
    net = _net()
    params = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    momenta = [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.eval()
    net[4].train()  # a mixed mode (dropout on) that must survive
    # one batch of all 24 images: the first layer's statistics are those of the input, by hand
    assert recalibrate_batchnorm(net, Images(x), batch_size=24) == 24
    by_channel = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(net[0].running_mean, by_channel.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[0].running_var, by_channel.var(1, unbiased=True), rtol=1e-5, atol=1e-6)
    # the second layer's: those of the conv output of the batch-normalised images (train-mode forward)
    with torch.no_grad():
        z = net[1]((x - by_channel.mean(1).view(1, 3, 1, 1)) / (by_channel.var(1, unbiased=False).view(1, 3, 1, 1)
                                                               + net[0].eps).sqrt() * net[0].weight.view(1, 3, 1, 1)
                   + net[0].bias.view(1, 3, 1, 1))
    zc = z.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(net[2].running_mean, zc.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[2].running_var, zc.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    # nothing else changed
    for k, v in net.state_dict().items():
        if k in params:
            assert torch.equal(v, params[k]), k
    assert [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert [m.training for m in net.modules()] == [False, False, False, False, False, True, False, False, False]


def test_equal_batches_average_to_the_overall_mean_and_a_short_last_batch_is_dropped():
    x = torch.randn(20, 3, 4, 4) + 1.5
    net = _net()
    assert recalibrate_batchnorm(net, Images(x), batch_size=8, seed=3) == 16  # 2 full batches of 8, 4 dropped
    # the same seed draws the same 16 images: the mean of two equal batch means is their overall mean
    net2 = _net()
    recalibrate_batchnorm(net2, Images(x), batch_size=8, seed=3)
    torch.testing.assert_close(net.state_dict(), net2.state_dict())
    assert ((net[0].running_mean - 1.5).abs().max() < 0.3
            and not torch.allclose(net[0].running_mean, _net()[0].running_mean))
    assert recalibrate_batchnorm(_net(), Images(x[:5]), batch_size=8) == 5  # fewer than one batch: all used


def test_bad_inputs_are_named_and_leave_the_model_as_it_was():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SibnetError, match="batch_size must be an integer >= 2"):
        recalibrate_batchnorm(net, Images(torch.randn(4, 3, 4, 4)), batch_size=1)
    with pytest.raises(SibnetError, match="the training split of x has 1 image"):
        recalibrate_batchnorm(net, Images(torch.randn(1, 3, 4, 4)), name="the training split of x")

    class Tuples(Images):
        def __getitem__(self, i):
            return self.x[i], 0

    with pytest.raises(SibnetError, match="must yield dicts with an 'image' tensor"):
        recalibrate_batchnorm(net, Tuples(torch.randn(4, 3, 4, 4)), batch_size=2)
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 2, 1)), Images(torch.randn(4, 3, 4, 4))) == 0
