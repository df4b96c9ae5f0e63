"""Duet orchestrator: the uvloop session service, the embedded Triton launcher and the floor logic."""
