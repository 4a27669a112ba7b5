"""What a model returned, read one way everywhere: its logits (:func:`logits_of`), its tensors (:func:`model_outputs`).

A model may return the logits, a Mapping with ``"logits"`` (a dict; a Hugging Face ``ModelOutput``, which is an
``OrderedDict`` with attribute access), or any object with a ``.logits`` Tensor (a dataclass, a named tuple). Every
task, loss term, monitor and callback that reads predictions goes through this module, so the three forms work
everywhere and anything else is one error that names what came back and what is accepted. Pure torch.

Example::

    >>> import torch
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Output:
    ...     logits: torch.Tensor
    >>> [logits_of(out).shape for out in (torch.zeros(2, 3), {"logits": torch.zeros(2, 3)}, Output(torch.zeros(2, 3)))]
    [torch.Size([2, 3]), torch.Size([2, 3]), torch.Size([2, 3])]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["ACCEPTED_OUTPUTS", "describe_output", "logits_of", "model_outputs"]

LOGITS = "logits"

#: The forms of a model's output the library reads; every error about an output ends with it.
ACCEPTED_OUTPUTS = (
    "a Tensor of (B, C) logits, a Mapping with a 'logits' entry (e.g. {'logits': ..., 'features': ...}), or an "
    "object with a .logits attribute (a Hugging Face ModelOutput, a dataclass)"
)


def describe_output(output: Any) -> str:
    """A short description of ``output`` for an error message: its type, and its shape, keys or items.

    Example::

        >>> describe_output((torch.zeros(2, 3), torch.zeros(2, 8)))
        'a tuple of 2 items (Tensor (2, 3), Tensor (2, 8))'
        >>> describe_output({"features": torch.zeros(2, 8)})
        "a dict with keys ['features']"
    """
    if isinstance(output, torch.Tensor):
        return f"a Tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {sorted(map(str, output))}"
    if isinstance(output, (tuple, list)):
        items = ", ".join(
            f"Tensor {tuple(item.shape)}" if isinstance(item, torch.Tensor) else type(item).__name__
            for item in output[:4]
        )
        more = ", ..." if len(output) > 4 else ""
        return f"a {type(output).__name__} of {len(output)} items ({items}{more})"
    return f"a {type(output).__name__}"


def _error(output: Any, who: str) -> TypeError:
    return TypeError(f"{who} returned {describe_output(output)}; it must return {ACCEPTED_OUTPUTS}.")


def logits_of(output: Any, who: str = "The model") -> torch.Tensor:
    """The logits in what a model returned: the Tensor itself, ``output["logits"]`` or ``output.logits``.

    Args:
        output: what the model's forward returned.
        who: what returned it, for the error message (e.g. ``"pgd_attack's model"``).

    Raises:
        TypeError: when ``output`` is none of the three forms, or its ``logits`` is not a Tensor; the message
            names what was returned and the accepted forms.

    Example::

        >>> from collections import OrderedDict
        >>> class ModelOutput(OrderedDict):  # how Hugging Face's outputs behave: a dict with attribute access
        ...     __getattr__ = OrderedDict.__getitem__
        >>> logits_of(ModelOutput(logits=torch.ones(1, 2), hidden_states=None)).tolist()
        [[1.0, 1.0]]
        >>> logits_of((torch.ones(1, 2),))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: The model returned a tuple of 1 items (Tensor (1, 2)); it must return a Tensor of (B, C) logits, ...
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get(LOGITS) if isinstance(output, Mapping) else getattr(output, LOGITS, None)
    if logits is None:
        raise _error(output, who)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{who} returned {describe_output(output)} whose 'logits' is a {type(logits).__name__}, not a Tensor; "
            f"it must return {ACCEPTED_OUTPUTS}."
        )
    return logits


def model_outputs(output: Any, who: str = "The model") -> dict[str, torch.Tensor]:
    """What a model returned, as a dict with at least ``"logits"``.

    - a Tensor ``t``: ``{"logits": t}``;
    - a Mapping with ``"logits"`` (a dict, a Hugging Face ``ModelOutput``): as it is (a plain ``dict`` is returned
      itself, another Mapping copied into one);
    - an object with a ``.logits`` Tensor (a dataclass, a named tuple, another object): its Tensor fields, logits
      included.

    Raises:
        TypeError: for anything else (or ``logits`` that is not a Tensor), naming the three accepted forms.

    Example::

        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Output:
        ...     logits: torch.Tensor
        ...     attention: torch.Tensor
        ...     note: str = "not a tensor"
        >>> sorted(model_outputs(Output(torch.zeros(2, 3), torch.ones(2, 4))))
        ['attention', 'logits']
        >>> sorted(model_outputs({"logits": torch.zeros(2, 3), "features": torch.zeros(2, 8)}))
        ['features', 'logits']
        >>> model_outputs(torch.zeros(2, 3))["logits"].shape
        torch.Size([2, 3])
    """
    logits = logits_of(output, who)
    if isinstance(output, torch.Tensor):
        return {LOGITS: logits}
    if isinstance(output, Mapping):
        return output if type(output) is dict else dict(output)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        fields = {field.name: getattr(output, field.name) for field in dataclasses.fields(output)}
    elif hasattr(output, "_asdict"):  # a named tuple
        fields = output._asdict()
    else:
        fields = dict(vars(output)) if hasattr(output, "__dict__") else {}
    outputs = {name: value for name, value in fields.items() if isinstance(value, torch.Tensor)}
    outputs[LOGITS] = logits
    return outputs
