"""Training: Hydra entry (``python -m train``), config schema, model building, chunked loss,
checkpoints, tracking and the CPT trainer."""
