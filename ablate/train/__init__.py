"""Training: trainer loop, optimizer and schedule, FSDP2 wrapping, DCP checkpoints, metrics."""
