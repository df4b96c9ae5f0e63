"""The replica's face: portrait assets, per-frame face parameters (motion) and the PyTorch renderer."""
