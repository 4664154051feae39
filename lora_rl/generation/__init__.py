"""Rollout generation: the native torch generator (default) and vLLM (optional extra)."""
