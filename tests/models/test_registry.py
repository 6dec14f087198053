"""Tests generated from the registry: every YAML-usable module honours its declared contract."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn

from models import registry
from models.modules.activation import default_activation, make_activation
from models.registry import LayerInputs
from models.yolo import fuse_modules
from helpers import randomize_batchnorm

IN_CHANNELS = 16
SIZE = 32

# YAML arguments used to build each module (after the parser's channel insertion, minus in_channels).
SAMPLE_ARGS = {
    "Conv": [16, 3, 1], "DWConv": [16, 3, 1], "Focus": [16, 3, 1], "Bottleneck": [16], "C3": [16],
    "SPP": [16], "SPPF": [16, 5], "GSConv": [16, 3, 1], "GSConvns": [16, 3, 1], "GSBottleneck": [16],
    "GSBottleneckC": [16], "VoVGSCSP": [16], "VoVGSCSPC": [16], "MP": [], "SP": [], "SPPCSPC": [16],
    "RepConv": [16, 3, 1], "Concat": [1], "nn.Upsample": [None, 2, "nearest"], "nn.MaxPool2d": [2, 2],
    "nn.Identity": [],
}
# A different value for each constructor argument (its default swapped for this one must change the module).
ALTERNATIVES = {"kernel_size": 5, "stride": 2, "dimension": 2, "padding": 0, "groups": 2, "dilation": 2, "act": False,
                "shortcut": False, "expansion": 0.25, "num_repeats": 2, "kernel_sizes": (3, 5)}
FEATURE_MODULES = [e for e in registry.entries() if not e.is_head and not e.name.startswith("nn.")]
# The alternative values of ALTERNATIVES that a module refuses outright, with the error each must give; any other
# error from an alternative fails the test.
EXPECTED_REJECTIONS = {("Concat", "dimension"): "Concat along dimension 2 is not supported",
                       ("RepConv", "kernel_size"): "RepConv supports kernel_size 3"}
# Modules that read their input with a grouped conv: the deploy pass folds no channel permutation into them.
GROUPED_INPUT = {"DWConv", "GSBottleneckC"}


def build(entry: registry.RegistryEntry, extra: dict | None = None) -> tuple[nn.Module, dict, int | None]:
    count = 2 if entry.takes_list else 1
    inputs = LayerInputs(list(SAMPLE_ARGS[entry.name]), [IN_CHANNELS] * count, [1.0] * count, 1)
    resolved = entry.channel_rule(inputs)
    bound = entry.signature().bind(*resolved.args)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.update(extra or {})
    module = entry.builder(**arguments)
    return module, arguments, resolved.out_channels


def make_input(entry) -> torch.Tensor | list[torch.Tensor]:
    x = torch.randn(2, IN_CHANNELS, SIZE, SIZE)
    return [x, x.clone()] if entry.takes_list else x


def test_every_sample_covers_the_registry():
    heads = {e.name for e in registry.entries() if e.is_head}
    assert set(SAMPLE_ARGS) | heads == set(registry.registered_names())


def test_duplicate_registration_raises():
    class Conv(nn.Module):  # same name as the registered Conv
        pass

    with pytest.raises(KeyError, match="already registered"):
        registry.register(Conv)


def test_unknown_module_suggests_close_matches():
    with pytest.raises(registry.ConfigError, match="did you mean.*GSConv"):
        registry.lookup("GSConvv")


@pytest.mark.parametrize("entry", FEATURE_MODULES + [e for e in registry.entries() if e.name.startswith("nn.")],
                         ids=lambda e: e.name)


def test_output_matches_declared_channels_and_stride(entry):
    module, arguments, out_channels = build(entry)
    x = make_input(entry)
    module.eval()
    y = module(x)
    assert y.shape[1] == out_channels
    stride = float(entry.output_stride(arguments))
    assert y.shape[-1] == pytest.approx(SIZE / stride)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("entry", FEATURE_MODULES, ids=lambda e: e.name)
def test_every_parameter_gets_a_gradient_and_train_output_is_finite(entry):
    module, _, _ = build(entry)
    module.train()
    y = module(make_input(entry))
    assert torch.isfinite(y).all()
    if not list(module.parameters()):
        return
    (y ** 2).mean().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("entry", [e for e in FEATURE_MODULES if hasattr(e.builder, "input_convs")],
                         ids=lambda e: e.name)


@torch.no_grad()
def test_input_convs_are_the_only_readers_of_the_input(entry):
    """The ``input_convs()`` contract: permuting the input channels and those convs' input weights alike leaves
    the fused module's output unchanged (what the deploy pass relies on to fold channel shuffles)."""
    from models.deploy import _input_convs, _permute_conv

    torch.manual_seed(0)
    module = fuse_modules(build(entry)[0])
    convs = _input_convs(module)
    assert convs, f"{entry.name}.input_convs() is empty"
    # GROUPED_INPUT is exactly the set of modules whose input convs are grouped (the deploy pass leaves those alone)
    assert any(conv.groups > 1 for conv in convs) == (entry.name in GROUPED_INPUT)
    if entry.name in GROUPED_INPUT:
        return
    x = make_input(entry)
    expected = module(x)
    order = torch.randperm(IN_CHANNELS)
    for conv in convs:
        _permute_conv(conv, order, None)
    torch.testing.assert_close(module(x[:, order]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entry", FEATURE_MODULES, ids=lambda e: e.name)
@torch.no_grad()
def test_fuse_leaves_no_batchnorm_and_keeps_the_output(entry):
    """The ``fuse()`` contract: after ``fuse_modules`` no BatchNorm is left (what ``DetectionModel.is_fused()``
    checks), the eval output is unchanged, and fusing a second time changes nothing."""
    torch.manual_seed(0)
    module = randomize_batchnorm(build(entry)[0].double().eval())
    x = make_input(entry)
    x = [t.double() for t in x] if isinstance(x, list) else x.double()
    expected = module(x)
    fuse_modules(module)
    assert not any(isinstance(child, nn.BatchNorm2d) for child in module.modules())
    torch.testing.assert_close(module(x), expected, atol=1e-9, rtol=1e-9)
    state = {key: value.clone() for key, value in module.state_dict().items()}
    fuse_modules(module)
    assert module.state_dict().keys() == state.keys()
    assert all(torch.equal(module.state_dict()[key], value) for key, value in state.items())


@pytest.mark.parametrize("entry", [e for e in registry.entries() if not e.is_head], ids=lambda e: e.name)
@torch.no_grad()
def test_channel_transparent_is_declared_exactly_where_a_permutation_passes_through(entry):
    """``channel_transparent``: permuting the input channels permutes the output channels alike (for Concat, each
    input's permutation shifted by its offset). The shuffle folding relies on it for the layers that declare it, and
    a layer that does not hold it must not declare it."""
    torch.manual_seed(0)
    module = fuse_modules(build(entry)[0])
    x = make_input(entry)
    order = torch.randperm(IN_CHANNELS)
    if entry.takes_list:
        permuted, expected_order = [t[:, order] for t in x], torch.cat([order + i * IN_CHANNELS for i in range(len(x))])
    else:
        permuted, expected_order = x[:, order], order
    output = module(x)
    holds = output.shape[1] == len(expected_order) and torch.allclose(module(permuted), output[:, expected_order],
                                                                        atol=1e-6)
    assert holds == entry.channel_transparent


def _structure(module: nn.Module) -> tuple:
    return repr(module), tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())


def _constructor_cases():
    for entry in FEATURE_MODULES:
        for name, parameter in entry.signature().parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                yield pytest.param(entry, name, id=f"{entry.name}.{name}")


@pytest.mark.parametrize("entry, argument", list(_constructor_cases()))
def test_every_constructor_argument_changes_the_module(entry, argument):
    """An accepted argument must change structure or function (house rule: no silently unused arguments)."""
    torch.manual_seed(0)
    base, arguments, _ = build(entry)
    alternative = ALTERNATIVES[argument]
    if arguments[argument] == alternative and argument == "kernel_size":
        alternative = 3
    if (entry.name, argument) in EXPECTED_REJECTIONS:  # rejected is acceptable: the argument is not silently ignored
        with pytest.raises(ValueError, match=EXPECTED_REJECTIONS[entry.name, argument]):
            build(entry, {argument: alternative})
        return
    changed, _, _ = build(entry, {argument: alternative})
    if _structure(base) != _structure(changed):
        return
    changed.load_state_dict(base.state_dict())
    base.eval(), changed.eval()
    x = make_input(entry)
    assert not torch.allclose(base(x), changed(x)), f"{entry.name}: {argument} has no effect"


def test_activation_scope_does_not_leak():
    with default_activation(nn.LeakyReLU(0.1)):
        assert isinstance(make_activation(True), nn.LeakyReLU)
    assert isinstance(make_activation(True), nn.SiLU)
