"""The switch between the two backward behaviours of one relevance pass's Functions.

Every Function that a :class:`~sibnet.saliency.relevance.RelevanceMode` puts into the graph gets
that pass's :class:`RelevanceSwitch` at forward time and keeps it on its autograd context. Its
backward reads the switch: off (the default), it hands the incoming gradient on as the original
operation's gradient; on (inside :func:`relevance_enabled`), it reads the gradient as relevance and
applies its rule.

The switch is an object of the pass, not a process-global or a context variable, because autograd
may run a backward on other threads than the caller's (one per device, DDP's reducer): what the
backward reads must travel with the graph. Two passes (two models, or a training graph still
alive beside a relevance pass) never see each other's switch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class RelevanceSwitch:
    """Whether the backward of one pass's Functions propagates relevance, and where it records it.

    Attributes:
        relevance: True while :func:`relevance_enabled` runs: the Functions propagate relevance.
        trace: a list that each rule step appends ``(step, r_out, r_in, absorbed)`` to (detached;
            ``absorbed`` the relevance the step keeps, or None), or None to record nothing.
    """

    relevance: bool = False
    trace: list | None = None

    @property
    def tracing(self) -> bool:
        """Whether rule steps are recorded (a trace is set)."""
        return self.trace is not None

    def record(self, step: str, r_out: torch.Tensor, r_in: torch.Tensor, absorbed: torch.Tensor | None = None):
        """Append one rule step to :attr:`trace` (nothing without a trace)."""
        if self.trace is not None:
            self.trace.append((step, r_out.detach(), r_in.detach(), None if absorbed is None else absorbed.detach()))


@contextlib.contextmanager
def relevance_enabled(switch: RelevanceSwitch, trace: list | None = None) -> Iterator[RelevanceSwitch]:
    """Within this context, the Functions holding ``switch`` propagate relevance instead of gradients.

    Args:
        switch: the pass's switch (:attr:`RelevanceMode.switch
            <sibnet.saliency.relevance.RelevanceMode.switch>`).
        trace: a list to record every rule step in (see :attr:`RelevanceSwitch.trace`), or None.

    Yields:
        ``switch``, restored to its previous state on exit.
    """
    previous = (switch.relevance, switch.trace)
    switch.relevance, switch.trace = True, trace
    try:
        yield switch
    finally:
        switch.relevance, switch.trace = previous
