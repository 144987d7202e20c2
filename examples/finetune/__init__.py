"""Fine-tuned models audited at a fraction of the cost: a frozen trunk, LoRA adapters."""
