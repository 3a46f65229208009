"""Checkpoint readers: GGUF files, Hugging Face directories, named models."""
