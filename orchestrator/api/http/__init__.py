"""The REST control plane: its OpenAPI document (the source of truth) and request/response validation."""
