"""Activation functions chosen by name from YAML, and the model-wide default activation.

A model YAML may set ``activation: nn.LeakyReLU(0.1)``. The parser makes that the default for every module
built inside ``default_activation(...)``; modules ask ``make_activation(True)`` for it. The default lives in a
context variable for the duration of one build, so building one model never changes another (unlike setting a
class attribute such as ``Conv.default_act``).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import re
from typing import Iterator

import torch.nn as nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "SiLU": nn.SiLU,
    "ReLU": nn.ReLU,
    "ReLU6": nn.ReLU6,
    "LeakyReLU": nn.LeakyReLU,
    "Hardswish": nn.Hardswish,
    "Mish": nn.Mish,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Identity": nn.Identity,
}
_PATTERN = re.compile(r"^(?:torch\.)?(?:nn\.)?([A-Za-z0-9]+)\(\s*([-+0-9.eE]*)\s*\)$")

_default: contextvars.ContextVar[nn.Module] = contextvars.ContextVar("default_activation", default=nn.SiLU())


def parse_activation(text: str) -> nn.Module:
    """Turn ``'nn.LeakyReLU(0.1)'``, ``'SiLU()'`` or ``'nn.SiLU'`` into a module; anything else raises ValueError."""
    match = _PATTERN.match(text.strip()) or _PATTERN.match(text.strip() + "()")
    if not match or match.group(1) not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {text!r}; allowed: {', '.join(f'nn.{n}()' for n in _ACTIVATIONS)}")
    name, argument = match.groups()
    cls = _ACTIVATIONS[name]
    if not argument:
        return cls()
    if cls is not nn.LeakyReLU:
        raise ValueError(f"activation {text!r}: only nn.LeakyReLU takes an argument (its negative slope)")
    return cls(float(argument))


def is_activation(value: object) -> bool:
    """True for an activation module instance of an allowed type."""
    return isinstance(value, tuple(_ACTIVATIONS.values()))


def make_activation(act: bool | nn.Module | str | None) -> nn.Module:
    """``True`` -> a fresh copy of the current default, ``False``/``None`` -> Identity, a module -> a copy of it."""
    if act is True:
        return copy.deepcopy(_default.get())
    if act is False or act is None:
        return nn.Identity()
    if isinstance(act, str):
        return parse_activation(act)
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    raise TypeError(f"act must be a bool, an activation module or its name, got {act!r}")


@contextlib.contextmanager
def default_activation(act: nn.Module | str | None) -> Iterator[None]:
    """Within the block, ``make_activation(True)`` returns ``act`` (SiLU when ``act`` is None)."""
    module = nn.SiLU() if act is None else make_activation(act)
    token = _default.set(module)
    try:
        yield
    finally:
        _default.reset(token)
