"""LoRA fine-tuning to a registered, servable adapter: data, train, compat (serving gate), export."""
