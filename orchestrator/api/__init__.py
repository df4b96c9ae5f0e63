"""Network APIs: the gRPC session stream (REST control plane and WebRTC come later)."""
