"""Training engine: Lightning module and data module, checkpoints, the train action."""
