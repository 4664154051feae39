"""Records from JSONL files, tokenized examples, and the deterministic order they are served in."""
