"""The domain: L2 vocabulary, the kinds and intents (model), the L2 state of a node and its
diff, the management path, names, the error model. Pure: imports nothing else of l2net and
does no I/O."""
