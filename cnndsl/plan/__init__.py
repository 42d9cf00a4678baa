"""The compile pass: a checked graph lowered to a typed execution plan.

`lower(graph, batch, train)` fuses layers into steps (cnndsl.plan.fusion), gives every
activation, saved tensor and gradient a live interval over the step order, and assigns the
buffers offsets in one reusable arena (cnndsl.plan.memory). `cnndsl check --plan` prints it
(cnndsl.plan.show). The plan is not executed yet: cnndsl.model still runs layer by layer.
Imports nothing heavier than networkx and numpy, so `check` stays light.
"""

from cnndsl.plan.lower import lower
from cnndsl.plan.steps import Buffer, Plan, Step

__all__ = ["Buffer", "Plan", "Step", "lower"]
