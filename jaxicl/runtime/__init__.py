"""Where and how fast things run: JAX's distributed runtime across hosts, device meshes and
sharding, the persistent compilation cache, compile counters and the per-stage clock."""
