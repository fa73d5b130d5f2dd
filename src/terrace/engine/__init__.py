"""The engine: turns a workspace's landscape into running, healthy services.

A level-triggered reconciler: desired state in the store, observed state from a runtime, a pure
function that plans the difference, a runtime that carries the plan out. This package holds the
pure parts first: the resource plans (``plans.py``) and the checks a landscape must pass before
a deploy changes anything (``checks.py``).
"""
