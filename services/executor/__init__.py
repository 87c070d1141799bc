"""The l2net executor: one per node, converges its kernel to the node's intent (see service)."""
