"""Model configuration, pure layer functions and the forward pass."""
