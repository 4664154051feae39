"""lora-rl: validated, declarative LoRA fine-tuning with SFT, DPO and GRPO."""

__version__ = "0.1.0"
