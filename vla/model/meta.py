"""Building a model's structure without its weights: parameters on the meta device, buffers real."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from transformers.initialization import no_init_weights


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device and is never initialized.

    Buffers (rotary frequencies, position ids) stay real: they are computed from the config,
    not loaded. Unlike ``torch.device("meta")``, nothing then needs recomputing after loading.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        with no_init_weights():
            yield
    finally:
        nn.Module.register_parameter = register
