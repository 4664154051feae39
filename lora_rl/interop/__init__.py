"""Interop with the Hugging Face ecosystem: PEFT adapters and merged checkpoints."""
