"""Deploy-time rewrites of a fused detection model: same outputs, less work per image.

Every rewrite here takes a *fused* eval model (``DetectionModel.fuse()``), returns a new inference-only model
(the input and its weights are left untouched, so a checkpoint stays what training produced) and keeps the
outputs equal up to float rounding. ``optimize_for_inference`` applies all of them; ``apply_rewrites`` applies a
chosen few, so the latency benchmark (benchmarks/latency.py) can measure each one. The rewrites
(``DEPLOY_REWRITES``):

* ``fold_shuffles`` - fold the GSConv channel shuffles into the convs that consume them (below). Part of the
  exported ONNX graph too.
* ``merge_csp`` - C3 / VoV-GSCSP blocks run their two 1x1 input convs as one conv and write the bottlenecks'
  result over the first half of its output, which the fusing conv then reads: the concatenation disappears.
  Inside VoV-GSCSP, each GSBottleneck runs its first dense conv and its 1x1 shortcut conv (same input) as one
  conv, and its residual add writes the two output halves directly. PyTorch only: in a traced graph these
  become slices, which ONNX Runtime copies.
* ``direct_decode`` - the detection head applies its sigmoid while copying each level into the final output and
  finishes the boxes in place (one pass over the predictions instead of several). PyTorch only.

Under ``torch.compile``, ``torch.jit.trace`` and ONNX export the deploy modules fall back to out-of-place
operations, which those tracers handle (``_functional``).

Folding the GSConv channel shuffle
----------------------------------
GSConv ends with a fixed channel permutation (the interleaving shuffle). A permutation in front of a convolution
is free: it is the same as permuting that convolution's input-channel weights. So the shuffle can be dropped
when every consumer of the GSConv output can absorb a permutation of its input channels.

The pass tracks, for every tensor, the order its channels are *stored* in relative to the order the original
model would have: ``stored[j] == true[order[j]]`` (``None`` means the original order). A GSConv without its
shuffle stores ``concat(dense, cheap)``, whose order is the inverse of the shuffle permutation. Orders flow
through layers that do not mix channels (upsampling, pooling, identity) and through concatenation (each input's
order shifted by its channel offset), and are absorbed by convolutions: a dense conv with input order ``p`` and
wanted output order ``q`` uses ``W[q][:, p]`` and ``b[q]``; a depth-wise conv needs ``p == q`` and uses ``W[q]``.
A residual add needs both operands in the same order, so inside a GSBottleneck the shortcut conv emits its
output in the main path's (unshuffled) order and the sum carries that order to the next consumer. The detection
head absorbs whatever order reaches it, so the decoded output is unchanged. A shuffle whose output reaches
anything that cannot absorb a permutation (a depth-wise conv, a YOLOv5 Bottleneck's residual, the model output,
a module that does not declare ``input_convs()``) is left in place. Which convs read a module's input is the
module's own declaration (``input_convs()``, models/registry.py), so a new module takes part without changes here;
only the slim-neck modules, whose shuffles are being folded, have their own handling below.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from models import registry
from models.modules.conv import Concat
from models.modules.csp import CSPBlock
from models.modules.gsconv import GSBottleneck, GSConv, VoVGSCSP, shuffle_permutation
from models.modules.heads import Detect, IDetect
from models.modules.yolov7 import RepConv

logger = logging.getLogger(__name__)

Order = torch.Tensor | None  # stored[j] == true[order[j]]; None is the original order


class UnshuffledGSConv(nn.Module):
    """A GSConv whose channel shuffle was folded into its consumers' weights (deploy form, created by
    ``fold_channel_shuffles``). (B, C_in, H, W) -> (B, C_out, H/s, W/s), channels stored as concat(dense, cheap).
    """

    def __init__(self, source: GSConv):
        super().__init__()
        self.primary = source.primary
        self.cheap = source.cheap

    def input_convs(self) -> list[nn.Module]:
        return [self.primary]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.primary(x)
        return torch.cat((dense, self.cheap(dense)), 1)


@dataclass
class DeployReport:
    """What ``fold_channel_shuffles`` did: shuffles before, folded, and the ones kept (with the reason)."""

    shuffles_before: int
    folded: int
    kept: list[str]

    @property
    def shuffles_after(self) -> int:
        return self.shuffles_before - self.folded


def count_channel_shuffles(model: nn.Module) -> int:
    """Number of channel shuffles a forward pass executes (GSConv modules that still shuffle)."""
    return sum(isinstance(module, GSConv) for module in model.modules())


def _inverse(permutation: torch.Tensor) -> torch.Tensor:
    return torch.argsort(permutation)


def unshuffled_order(channels: int) -> torch.Tensor:
    """The stored order of a GSConv output whose shuffle was removed (the inverse of the shuffle permutation)."""
    return _inverse(shuffle_permutation(channels, 2))


def _same(a: Order, b: Order) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _conv_accepts(conv: nn.Conv2d, in_order: Order, out_order: Order) -> bool:
    if in_order is None and out_order is None:
        return True
    if conv.groups == 1:
        return True
    return _is_depthwise(conv) and _same(in_order, out_order)


@torch.no_grad()
def _permute_conv(conv: nn.Conv2d, in_order: Order, out_order: Order) -> None:
    """Make ``conv`` read its input in ``in_order`` and write its output in ``out_order`` (see the module doc)."""
    if in_order is None and out_order is None:
        return
    if not _conv_accepts(conv, in_order, out_order):
        raise ValueError(f"{conv} cannot absorb this channel permutation (groups={conv.groups})")
    weight = conv.weight
    if out_order is not None:
        weight = weight[out_order.to(weight.device)]
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[out_order.to(weight.device)])
    if in_order is not None and conv.groups == 1:
        weight = weight[:, in_order.to(weight.device)]
    conv.weight.copy_(weight.contiguous())


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """The nn.Conv2d of a fused Conv or RepConv."""
    if isinstance(module, RepConv):
        if module.fused is None:
            raise ValueError("RepConv is not re-parameterised; call model.fuse() first")
        return module.fused
    if not isinstance(module.bn, nn.Identity):
        raise ValueError("Conv still has its BatchNorm; call model.fuse() first")
    return module.conv


def _input_convs(module: nn.Module) -> list[nn.Conv2d] | None:
    """The fused convs that read ``module``'s input (the module's ``input_convs()`` contract, models/registry.py);
    None for a module without the contract."""
    reader = getattr(module, "input_convs", None)
    return None if reader is None else [_conv_of(layer) for layer in reader()]


def _concat_orders(orders: list[Order], channels: list[int]) -> Order:
    if all(order is None for order in orders):
        return None
    parts, offset = [], 0
    for order, count in zip(orders, channels):
        parts.append((torch.arange(count) if order is None else order) + offset)
        offset += count
    return torch.cat(parts)


class _ShuffleFolder:
    """One pass of shuffle folding over a fused model (see the module docstring)."""

    def __init__(self):
        self.folded = 0
        self.kept: list[str] = []

    # --- which layers can take a permuted input ---------------------------------------------------------------
    def absorbs(self, module: nn.Module) -> bool:
        """True when the layer accepts its input channels in any stored order: every conv reading its input is
        dense (a grouped or depth-wise conv mixes only channels within a group, so it cannot)."""
        if isinstance(module, nn.Sequential):
            return len(module) > 0 and self.absorbs(module[0])
        if isinstance(module, Detect):
            return not isinstance(module, IDetect) or module.implicit_folded
        convs = _input_convs(module)
        return convs is not None and all(conv.groups == 1 for conv in convs)

    # --- applying a layer to an input order -------------------------------------------------------------------
    def apply(self, module: nn.Module, in_order: Order, may_emit: bool, name: str) -> tuple[nn.Module, Order]:
        """Rewrite ``module`` to read ``in_order``; returns (the module to use, the order of its output).

        ``may_emit`` says whether the output may be left in a non-original order (all consumers absorb it).
        """
        if isinstance(module, nn.Sequential):
            for index, child in enumerate(module):
                emit = may_emit if index == len(module) - 1 else self.absorbs(module[index + 1])
                module[index], in_order = self.apply(child, in_order, emit, f"{name}.{index}")
            return module, in_order
        # The slim-neck modules, whose own shuffles this pass folds:
        if isinstance(module, GSConv):
            return self.gsconv(module, in_order, may_emit, name)
        if isinstance(module, GSBottleneck):
            return module, self.bottleneck(module, in_order, may_emit, name)
        if isinstance(module, VoVGSCSP):
            self.vovgscsp(module, in_order, name)
            return module, None
        # Any other module: its input convs read the stored order; its output is in the original order.
        convs = _input_convs(module)
        if convs is None:
            if in_order is not None:
                raise AssertionError(f"{name}: {type(module).__name__} was given a permuted input")
            return module, None
        for conv in convs:
            _permute_conv(conv, in_order, None)
        return module, None

    def gsconv(self, module: GSConv, in_order: Order, may_emit: bool, name: str) -> tuple[nn.Module, Order]:
        _permute_conv(_conv_of(module.primary), in_order, None)
        if not may_emit:
            self.kept.append(f"{name}: its output reaches a consumer that cannot absorb a channel permutation")
            return module, None
        self.folded += 1
        return UnshuffledGSConv(module), unshuffled_order(_conv_of(module.primary).out_channels * 2)

    def bottleneck(self, module: GSBottleneck, in_order: Order, may_emit: bool, name: str) -> Order:
        """GSConv -> GSConv (+ shortcut). The inner shuffle always folds into the second GSConv's dense conv; the
        outer one folds when the shortcut conv can write the same order and the caller allows it."""
        first, second = module.main
        shortcut = None if module.shortcut is None else _conv_of(module.shortcut)
        module.main[0], middle = self.gsconv(first, in_order, True, f"{name}.main.0")
        out_channels = _conv_of(second.primary).out_channels * 2
        target = unshuffled_order(out_channels)
        emit = may_emit and (shortcut is None or _conv_accepts(shortcut, in_order, target))
        module.main[1], out_order = self.gsconv(second, middle, emit, f"{name}.main.1")
        if shortcut is not None:
            _permute_conv(shortcut, in_order, out_order)
        return out_order

    def vovgscsp(self, module: VoVGSCSP, in_order: Order, name: str) -> None:
        """The bottleneck chain runs in the unshuffled order from its input conv to the fusing conv, so every
        shuffle inside folds, including those before depth-wise (GSBottleneckC) shortcuts."""
        hidden = _conv_of(module.main_in).out_channels
        blocks = list(module.blocks)
        chain_order = unshuffled_order(hidden) if blocks and self._takes_unshuffled(blocks[0]) else None
        _permute_conv(_conv_of(module.main_in), in_order, chain_order)
        _permute_conv(_conv_of(module.skip), in_order, None)
        order = chain_order
        for index, block in enumerate(blocks):
            may_emit = index == len(blocks) - 1 or self._takes_unshuffled(blocks[index + 1])
            order = self.bottleneck(block, order, may_emit, f"{name}.blocks.{index}")
        _permute_conv(_conv_of(module.fuse), _concat_orders([order, None], [hidden, hidden]), None)

    @staticmethod
    def _takes_unshuffled(block: GSBottleneck) -> bool:
        """Whether a VoVGSCSP bottleneck can read its input in the unshuffled order. Its outputs keep the channel
        count, so a depth-wise shortcut then reads and writes the same order, which it can."""
        return _conv_of(block.main[0].primary).groups == 1

    def detect(self, head: Detect, in_orders: list[Order]) -> None:
        for conv, order in zip(head.output_convs(), in_orders):
            _permute_conv(conv, order, None)


def _require_fused(model: nn.Module) -> None:
    if model.training:
        raise ValueError("deploy rewrites need an eval model; call model.eval().fuse() first")
    if hasattr(model, "is_fused") and not model.is_fused():
        raise ValueError("deploy rewrites need a fused model (no BatchNorm left); call model.fuse() first")


@torch.no_grad()
def fold_channel_shuffles(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, DeployReport]:
    """Fold every GSConv channel shuffle that can be folded into the weights of the convs that consume it.

    ``model`` is a fused eval ``DetectionModel``; returns (the rewritten model, a report). Unless ``inplace``,
    the input model is deep-copied first and left unchanged.
    """
    _require_fused(model)
    if not inplace:
        model = copy.deepcopy(model)
    before = count_channel_shuffles(model)
    folder = _ShuffleFolder()
    records, layers = model.records, model.layers
    consumers: dict[int, list[int]] = {record.index: [] for record in records}
    for record in records:
        for source in record.sources:
            if source >= 0:
                consumers[source].append(record.index)
    transparent = [registry.lookup(record.module_name).channel_transparent for record in records]
    # Whether a layer's output may stay permuted: every consumer absorbs it, or passes it on (without mixing
    # channels) to consumers that do. Consumers come later, so one backward sweep settles it.
    may_emit = [False] * len(records)
    for record in reversed(records[:-1]):
        ok = bool(consumers[record.index])
        for consumer in consumers[record.index]:
            if transparent[consumer]:
                ok = ok and may_emit[consumer]
            else:
                ok = ok and folder.absorbs(layers[consumer])
        may_emit[record.index] = ok

    orders: list[Order] = []
    for record in records:
        in_orders = [None if source == -1 else orders[source] for source in record.sources]
        layer = layers[record.index]
        name = f"layers.{record.index}"
        if isinstance(layer, Concat):
            channels = [model.in_channels if s == -1 else records[s].out_channels for s in record.sources]
            orders.append(_concat_orders(in_orders, channels))
        elif transparent[record.index]:
            orders.append(in_orders[0])
        elif isinstance(layer, Detect):
            folder.detect(layer, in_orders)
            orders.append(None)
        else:
            if len(in_orders) != 1 and any(order is not None for order in in_orders):
                raise AssertionError(f"{name}: a multi-input {type(layer).__name__} was given a permuted input")
            layers[record.index], out_order = folder.apply(layer, in_orders[0], may_emit[record.index], name)
            orders.append(out_order)
    model.eval()  # the modules created here start in training mode
    report = DeployReport(before, folder.folded, folder.kept)
    logger.info("folded %d of %d GSConv channel shuffles into conv weights", report.folded, before)
    return model, report


def _functional() -> bool:
    """True while torch.compile, torch.onnx or torch.jit traces the model: the deploy modules then use plain
    out-of-place operations (writes into views of a buffer do not survive tracing, and a compiler plans the
    memory itself)."""
    if torch.compiler.is_compiling():
        return True  # checked first: asking the other two under torch.compile would break its graph
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


# --- the detection head: decode straight into the output tensor ---------------------------------------------------

class DirectDecodeDetect(Detect):
    """Deploy form of a fused Detect/IDetect head with the same outputs, decoded with fewer passes over memory.

    The reference head copies each level's logits into (B, A, H, W, 5 + nc) order, applies the sigmoid, builds the
    boxes with out-of-place slices and concatenates twice. Here each level's sigmoid reads the conv output through
    a permuted view and writes its slice of the final (B, N, 5 + nc) tensor; boxes are then finished in place on
    the 4 box columns. The raw maps are returned as (B, A, H, W, 5 + nc) views of the conv outputs.
    """

    @classmethod
    def from_head(cls, head: Detect) -> "DirectDecodeDetect":
        if isinstance(head, IDetect) and not head.implicit_folded:
            raise ValueError("IDetect still has its implicit layers; call model.fuse() first")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.num_classes, module.num_outputs = head.num_classes, head.num_outputs
        module.num_levels, module.num_anchors = head.num_levels, head.num_anchors
        module.anchors_generated = head.anchors_generated
        module.register_buffer("stride", head.stride.clone())
        module.register_buffer("anchors", head.anchors.clone())
        module.outputs = nn.ModuleList(head.output_convs())
        module.reset_grids()
        return module.train(head.training)

    def forward(self, inputs: list[torch.Tensor]):
        if self.training or _functional():
            return super().forward(inputs)
        logits = [self.outputs[level](x) for level, x in enumerate(inputs)]
        batch = logits[0].shape[0]
        total = sum(self.num_anchors * y.shape[2] * y.shape[3] for y in logits)
        decoded = logits[0].new_empty(batch, total, self.num_outputs)
        raw, offset = [], 0
        for level, y in enumerate(logits):
            height, width = y.shape[2], y.shape[3]
            level_raw = y.view(batch, self.num_anchors, self.num_outputs, height, width).permute(0, 1, 3, 4, 2)
            raw.append(level_raw)
            count = self.num_anchors * height * width
            target = decoded[:, offset:offset + count].view(batch, self.num_anchors, height, width, self.num_outputs)
            offset += count
            torch.sigmoid(level_raw, out=target)
            grid, anchor_grid = self._grid(level, height, width, y.device, y.dtype)
            # Same operations in the same order as Detect.decode, so the values are bit-identical.
            target[..., :2].mul_(2).sub_(0.5).add_(grid).mul_(self.stride[level])
            target[..., 2:4].mul_(2).pow_(2).mul_(anchor_grid)
        return decoded, raw

    def _grid(self, level: int, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Detect's grids, cached by size only: a deploy head's anchors never change, and the anchor tensor's
        address in Detect's cache key would break a torch.compile graph (which then rebuilds them as constants)."""
        key = (level, height, width, device, dtype)
        compiling = torch.compiler.is_compiling()
        if compiling or key not in self._grids:
            ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                    torch.arange(width, device=device, dtype=dtype), indexing="ij")
            grid = torch.stack((xs, ys), 2).view(1, 1, height, width, 2)
            anchor_grid = (self.anchors[level] * self.stride[level]).to(dtype).view(1, self.num_anchors, 1, 1, 2)
            if compiling:
                return grid, anchor_grid
            self._grids[key] = (grid, anchor_grid)
        return self._grids[key]


def direct_decode_head(model: nn.Module) -> int:
    """Replace the fused model's detection head by ``DirectDecodeDetect`` (in place); returns 1 (or 0 if done)."""
    head = model.layers[-1]
    if isinstance(head, DirectDecodeDetect) or not isinstance(head, Detect):
        return 0
    model.layers[-1] = DirectDecodeDetect.from_head(head)
    return 1


# --- CSP blocks: one input conv, no concatenation ---------------------------------------------------------------

def _merged_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """One conv computing the outputs of ``convs`` (same input, kernel, stride, padding, groups 1), stacked."""
    first = convs[0]
    merged = nn.Conv2d(first.in_channels, sum(c.out_channels for c in convs), first.kernel_size, first.stride,
                       first.padding, first.dilation, bias=True).to(first.weight.device, first.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([c.weight for c in convs]))
        merged.bias.copy_(torch.cat([c.bias if c.bias is not None else torch.zeros(c.out_channels,
                                                                                   dtype=c.weight.dtype,
                                                                                   device=c.weight.device)
                                     for c in convs]))
    return merged.to(memory_format=_memory_format(first.weight))


def _can_merge(convs: list[nn.Conv2d]) -> bool:
    first = convs[0]
    return all(c.groups == 1 and c.in_channels == first.in_channels and c.kernel_size == first.kernel_size
               and c.stride == first.stride and c.padding == first.padding and c.dilation == first.dilation
               and c.padding_mode == "zeros" for c in convs)


def _same_activation(a: nn.Module, b: nn.Module) -> bool:
    return type(a) is type(b) and getattr(a, "negative_slope", None) == getattr(b, "negative_slope", None)


class MergedGSBottleneck(nn.Module):
    """Deploy form of a GSBottleneck whose shuffles were folded: its first dense conv and its 1x1 shortcut conv
    read the same input, so they run as one conv; the residual add writes the two halves of the output directly,
    so the second GSConv's concatenation disappears. (B, C, H, W) -> (B, C, H, W), unshuffled channel order.
    """

    def __init__(self, block: GSBottleneck):
        super().__init__()
        first, second = block.main
        self.hidden = _conv_of(first.primary).out_channels
        self.stem = _merged_conv([_conv_of(first.primary), _conv_of(block.shortcut)])
        self.stem_act = first.primary.act
        self.first_cheap = first.cheap
        self.second_primary = second.primary
        self.second_cheap = second.cheap

    @staticmethod
    def applies_to(block: nn.Module) -> bool:
        if not isinstance(block, GSBottleneck) or block.shortcut is None:
            return False
        first, second = block.main
        if not (isinstance(first, UnshuffledGSConv) and isinstance(second, UnshuffledGSConv)):
            return False
        return _can_merge([_conv_of(first.primary), _conv_of(block.shortcut)])

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        stem = self.stem(x)
        dense = self.stem_act(stem[:, :self.hidden])
        shortcut = stem[:, self.hidden:]
        middle = torch.cat((dense, self.first_cheap(dense)), 1)
        second_dense = self.second_primary(middle)
        second_cheap = self.second_cheap(second_dense)
        if _functional():
            return torch.cat((second_dense, second_cheap), 1) + shortcut
        half = second_dense.shape[1]
        if out is None:
            out = torch.empty(shortcut.shape, dtype=shortcut.dtype, device=shortcut.device,
                              memory_format=_memory_format(second_dense))
        torch.add(second_dense, shortcut[:, :half], out=out[:, :half])
        torch.add(second_cheap, shortcut[:, half:], out=out[:, half:])
        return out


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    channels_last = tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) \
        and not tensor.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class MergedInputCSP(nn.Module):
    """Deploy form of C3 / VoVGSCSP / VoVGSCSPC: the two 1x1 input convs run as one conv whose output holds
    [main | skip]; the bottlenecks run on the main half and their result is written back over it, so the
    fusing conv reads that buffer directly instead of a concatenation. (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(self, block: CSPBlock):
        super().__init__()
        self.hidden = _conv_of(block.main_in).out_channels
        self.stem = _merged_conv([_conv_of(block.main_in), _conv_of(block.skip)])
        self.stem_act = block.main_in.act
        self.blocks = nn.ModuleList(block.blocks)
        self.fuse = block.fuse

    @staticmethod
    def applies_to(block: nn.Module) -> bool:
        return (isinstance(block, CSPBlock)
                and _can_merge([_conv_of(block.main_in), _conv_of(block.skip)])
                and _same_activation(block.main_in.act, block.skip.act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem_act(self.stem(x))
        main = stem[:, :self.hidden]
        if _functional():
            for block in self.blocks:
                main = block(main)
            return self.fuse(torch.cat((main, stem[:, self.hidden:]), 1))
        last = len(self.blocks) - 1
        written = False
        for index, block in enumerate(self.blocks):
            if index == last and isinstance(block, MergedGSBottleneck):
                # The main half was fully read by this block's stem conv before the add overwrites it.
                block(main, out=stem[:, :self.hidden])
                written = True
            else:
                main = block(main)
        if not written:
            stem[:, :self.hidden].copy_(main)
        return self.fuse(stem)


def merge_csp_inputs(model: nn.Module) -> int:
    """Replace C3 / VoVGSCSP blocks by ``MergedInputCSP`` and shuffle-free GSBottlenecks inside them by
    ``MergedGSBottleneck`` (in place). Returns the number of modules replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if MergedInputCSP.applies_to(child):
                for index, block in enumerate(child.blocks):
                    if MergedGSBottleneck.applies_to(block):
                        child.blocks[index] = MergedGSBottleneck(block)
                        replaced += 1
                setattr(parent, name, MergedInputCSP(child))
                replaced += 1
    return replaced


def _fold_rewrite(model: nn.Module) -> int:
    return fold_channel_shuffles(model, inplace=True)[1].folded


@dataclass(frozen=True)
class Rewrite:
    """A deploy rewrite: ``apply`` changes a fused eval model in place and returns how many places it changed.
    ``for_onnx`` says whether it belongs in an exported graph (the others only speed up PyTorch execution)."""

    apply: Callable[[nn.Module], int]
    summary: str
    for_onnx: bool


# Order matters: merging a GSBottleneck's convs needs its shuffles folded first.
DEPLOY_REWRITES: dict[str, Rewrite] = {
    "fold_shuffles": Rewrite(_fold_rewrite, "GSConv channel shuffles folded into the consuming convs' weights", True),
    "merge_csp": Rewrite(merge_csp_inputs, "C3/VoV-GSCSP input convs merged, block output written in place of "
                         "the concatenation; GSBottleneck first conv + shortcut merged", False),
    "direct_decode": Rewrite(direct_decode_head, "detection head decodes straight into its output tensor", False),
}
TARGETS = ("pytorch", "onnx")


def rewrites_for(target: str = "pytorch") -> list[str]:
    """Names of the rewrites ``optimize_for_inference`` applies for ``target`` ('pytorch' or 'onnx')."""
    if target not in TARGETS:
        raise ValueError(f"unknown deploy target {target!r}; choose from {', '.join(TARGETS)}")
    return [name for name, rewrite in DEPLOY_REWRITES.items() if target == "pytorch" or rewrite.for_onnx]


def apply_rewrites(model: nn.Module, names: list[str] | tuple[str, ...] | None = None, inplace: bool = False
                   ) -> tuple[nn.Module, dict[str, int]]:
    """Apply the named deploy rewrites (all of ``DEPLOY_REWRITES`` by default) in registry order.

    Returns (the model, {rewrite: places changed}); unless ``inplace`` the input model is copied first. The result
    is an inference-only model: eval mode, no parameter requires a gradient.
    """
    _require_fused(model)
    names = list(DEPLOY_REWRITES) if names is None else list(names)
    unknown = [name for name in names if name not in DEPLOY_REWRITES]
    if unknown:
        raise ValueError(f"unknown deploy rewrite(s) {unknown}; known: {', '.join(DEPLOY_REWRITES)}")
    if not inplace:
        model = copy.deepcopy(model)
    changes = {name: DEPLOY_REWRITES[name].apply(model) for name in DEPLOY_REWRITES if name in names}
    model.eval()  # the modules created by the rewrites start in training mode
    model.requires_grad_(False)  # the in-place decoding refuses tensors that track gradients
    return model, changes


def optimize_for_inference(model: nn.Module, inplace: bool = False, target: str = "pytorch") -> nn.Module:
    """All deploy rewrites for ``target`` (see the module docstring and ``DEPLOY_REWRITES``). ``model``: a fused
    eval model; returns the rewritten model (a copy unless ``inplace``), whose outputs equal the input model's up to
    float rounding. ``target='onnx'`` keeps only the rewrites that belong in an exported graph."""
    return apply_rewrites(model, rewrites_for(target), inplace)[0]
