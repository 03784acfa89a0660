"""LoRA fine-tuning to a registered, servable adapter (planned in issue #3)."""
