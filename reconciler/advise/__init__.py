"""Capacity advice: the cheapest multiset of node types on which a pool's replicas fit, proven where it can be.

Pure, like the planner beside it: `advise(request, settings) -> Advice` takes the packer's items (the replicas to
place), a catalogue of node types with prices, the pool's reserve, the node failures to survive and the nodes already
paid for, and returns the nodes to add, their cost, a bound no choice can beat, the runner-up and a placement.
"""

from reconciler.advise.demand import request_for
from reconciler.advise.problem import (
    PRICE_UNIT,
    Advice,
    AdvisedNode,
    AdviseSettings,
    Choice,
    Infeasible,
    NodeType,
    Request,
)
from reconciler.advise.solve import advise

__all__ = ["PRICE_UNIT", "Advice", "AdviseSettings", "AdvisedNode", "Choice", "Infeasible", "NodeType", "Request",
           "advise", "request_for"]
