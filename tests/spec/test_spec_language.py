"""The spec language on small hand-made networks: scoped defaults, channel inference,
naming rules, TF padding and pooling semantics worked out by hand."""

import pytest
import torch

from incept.spec import (
    AvgPool,
    Branch,
    Classifier,
    Concat,
    Conv,
    MaxPool,
    Net,
    Residual,
    Seq,
    build,
    slim_variable_names,
    xavier,
)
from incept.spec.layers import ConvBN, Pool, tf_same_pads


def tiny(**defaults):
    return Net(
        "Tiny",
        Seq(Conv(8, 3, 2, name="Conv2d_1a_3x3"), padding="valid"),
        Concat(
            Branch("1x1", Conv(4, 1)),
            Branch("3x3", Conv(6, 1), Conv(6, 3, act=None)),
            Branch("_pool", MaxPool(3), Conv(2, 1)),
            name="Mixed_1",
        ),
        Residual(
            Concat(Branch("a", Conv(4, 1)), Branch("b", Conv(4, 1), Conv(4, 3))),
            Conv(None, 1, name="up", bias=True, norm=False, act=None, slim="Conv2d_1x1"),
            scale=0.5,
            name="Block_2",
        ),
        Classifier(3, name="fc", slim="Logits/Conv2d_1c_1x1"),
        **defaults,
    )


def test_channels_are_inferred_and_end_points_named():
    model = build(tiny(), min_depth=1).eval()
    assert [s for s, _ in model.stages] == ["Conv2d_1a_3x3", "Mixed_1", "Block_2", "fc"]
    points = model.end_points(torch.randn(2, 3, 17, 17))
    assert points["Conv2d_1a_3x3"].shape == (2, 8, 8, 8)
    assert points["Mixed_1"].shape == (2, 12, 8, 8)  # 4 + 6 + 2
    assert points["Block_2"].shape == (2, 12, 8, 8)  # residual keeps the shortcut's channels
    assert points["Logits"].shape == (2, 3)
    assert model.Block_2.up.conv.out_channels == 12


def test_scoped_defaults_and_explicit_arguments():
    model = build(tiny(bn_eps=0.01, act="relu"), min_depth=1)
    stem = model.Conv2d_1a_3x3
    assert stem.padding_rule == "valid"  # from the Seq's scope
    assert stem.bn.eps == 0.01  # from the Net's scope
    assert model.Mixed_1.branch3x3_1.padding_rule == "same/tf"  # language default
    assert model.Mixed_1.branch3x3_2.act is None  # explicit wins
    assert model.Block_2.up.bn is None and model.Block_2.up.conv.bias is not None
    assert "padding=valid" in repr(stem)  # resolved values visible on the built modules


def test_width_multiplier_and_min_depth():
    model = build(tiny(), width=0.5, min_depth=3)
    assert model.Conv2d_1a_3x3.conv.out_channels == 4
    assert model.Mixed_1.branch_pool.conv.out_channels == 3  # max(int(2 * 0.5), 3)
    assert model.fc.out_features == 3  # logits never scaled
    with pytest.raises(ValueError, match="width"):
        build(tiny(), width=0)


def test_naming_rules():
    model = build(tiny(), min_depth=1)
    keys = list(model.state_dict())
    assert "Mixed_1.branch1x1.conv.weight" in keys
    assert "Mixed_1.branch3x3_2.bn.running_var" in keys
    assert "Block_2.brancha.conv.weight" in keys and "Block_2.branchb_2.conv.weight" in keys
    names = slim_variable_names(model)
    assert names["Mixed_1.branch3x3_2.conv.weight"] == "Tiny/Mixed_1/Branch_1/Conv2d_0b_3x3/weights"
    # the pool takes letter a in its branch, the conv after it b
    assert names["Mixed_1.branch_pool.conv.weight"] == "Tiny/Mixed_1/Branch_2/Conv2d_0b_1x1/weights"
    assert names["Block_2.up.conv.bias"] == "Tiny/Block_2/Conv2d_1x1/biases"
    assert names["fc.weight"] == "Tiny/Logits/Conv2d_1c_1x1/weights"
    assert names["Conv2d_1a_3x3.bn.bias"] == "Tiny/Conv2d_1a_3x3/BatchNorm/beta"


def test_renames_and_duplicate_names():
    net = tiny()
    net.slim_renames = {"Mixed_1/Branch_0/Conv2d_0a_1x1": "Mixed_1/Branch_0/Odd_name"}
    names = slim_variable_names(build(net, min_depth=1))
    assert names["Mixed_1.branch1x1.conv.weight"] == "Tiny/Mixed_1/Branch_0/Odd_name/weights"
    clash = Net("X", Concat(Branch("1", Conv(4, 1)), Branch("1", Conv(4, 1)), name="M"))
    with pytest.raises(ValueError, match="two layers named M.branch1"):
        build(clash)


def test_residual_adds_the_scaled_body():
    up = Conv(None, 1, name="conv", norm=False, act=None, bias=True)
    net = Net("R", Residual(up, scale=0.5, name="B"))
    model = build(net)
    with torch.no_grad():
        model.B.conv.conv.weight.zero_()
        model.B.conv.conv.bias.fill_(2.0)
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(model(x), torch.relu(x + 1.0))


def test_tf_same_padding_by_hand():
    assert tf_same_pads(4, 3, 2) == (0, 1)  # out 2: needs 5 rows, the extra one after
    assert tf_same_pads(5, 3, 2) == (1, 1)
    assert tf_same_pads(7, 1, 2) == (0, 0)
    options = dict(
        padding="same", bias=False, norm=False, bn_eps=1e-3, bn_momentum=0.1, bn_scale=True,
        act=None, init=xavier(), fit=False,
    )  # fmt: skip
    conv = ConvBN(1, 1, (3, 3), 2, same_padding="tf", **options)
    torch.nn.init.ones_(conv.conv.weight)
    out = conv(torch.ones(1, 1, 4, 4))
    # windows: rows/cols 0-2 (all inside) and 2-4 (row/col 4 is padding)
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]
    symmetric = ConvBN(1, 1, (3, 3), 2, same_padding="symmetric", **options)
    torch.nn.init.ones_(symmetric.conv.weight)
    assert symmetric(torch.ones(1, 1, 4, 4))[0, 0].tolist() == [[4.0, 6.0], [6.0, 9.0]]


def test_average_pool_padding_count():
    x = torch.ones(1, 1, 4, 4)
    tf_pool = Pool("AvgPool", (3, 3), 1, padding="same", same_padding="tf", fit=False,
                   count_pad=False)  # fmt: skip
    torch_pool = Pool("AvgPool", (3, 3), 1, padding="same", same_padding="symmetric", fit=False,
                      count_pad=True)  # fmt: skip
    assert torch.equal(tf_pool(x), x)  # TF: the padding is not counted
    assert torch_pool(x)[0, 0, 0, 0].item() == pytest.approx(4 / 9)  # torchvision counts it
    strided = Pool("AvgPool", (3, 3), 2, padding="same", same_padding="tf", fit=False,
                   count_pad=False)  # fmt: skip
    ramp = torch.arange(16.0).view(1, 1, 4, 4)
    # bottom-right window covers rows/cols 2-3 only: mean of 10, 11, 14, 15
    assert strided(ramp)[0, 0, 1, 1].item() == pytest.approx(12.5)
    maxed = Pool("MaxPool", (3, 3), 2, padding="same", same_padding="tf", fit=False,
                 count_pad=False)  # fmt: skip
    assert maxed(-ramp - 1)[0, 0].tolist() == [[-1.0, -3.0], [-9.0, -11.0]]


def test_fit_runs_a_large_kernel_on_a_small_map():
    pool = Pool("AvgPool", (5, 5), 3, padding="valid", same_padding="tf", fit=True,
                count_pad=False)  # fmt: skip
    assert pool(torch.ones(1, 2, 3, 3)).shape == (1, 2, 1, 1)
    options = dict(
        padding="valid", same_padding="tf", bias=False, norm=False, bn_eps=1e-3,
        bn_momentum=0.1, bn_scale=True, act=None, init=xavier(), fit=True,
    )  # fmt: skip
    conv = ConvBN(1, 1, (5, 5), 1, **options)
    x = torch.randn(1, 1, 1, 1)
    # a 1x1 map zero-padded to 5x5 meets only the kernel's centre
    assert conv(x).item() == pytest.approx((x * conv.conv.weight[0, 0, 2, 2]).item(), rel=1e-5)


def test_unknown_option_and_unnamed_top_level_node():
    with pytest.raises(TypeError, match="no option colour"):
        Conv(4, 3, colour="red")
    with pytest.raises(ValueError, match="needs a name"):
        Net("X", Conv(4, 3))
    with pytest.raises(ValueError, match="only allowed inside a Residual"):
        build(Net("X", Conv(None, 1, name="c")))
    with pytest.raises(ValueError, match="reduce differently"):
        build(Net("X", Concat(Conv(4, 3, 2), AvgPool(3), name="M")))


def test_even_kernels_pad_by_tf_rule_under_both_semantics():
    for same_padding in ("tf", "symmetric"):
        pool = Pool("MaxPool", (2, 2), 2, padding="same", same_padding=same_padding, fit=False,
                    count_pad=True)  # fmt: skip
        assert pool(torch.zeros(1, 1, 14, 14)).shape[-1] == 7  # ceil(14 / 2), as TF's SAME
        assert pool(torch.zeros(1, 1, 7, 7)).shape[-1] == 4
