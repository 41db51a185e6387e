"""The model: activations, the fused MLM head, the document and IDF query encoders, the FLOPS regulariser, schedules,
ranking losses, and the on-disk model formats."""
