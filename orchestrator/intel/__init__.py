"""What a persona adds to a conversation beyond talking: guardrails, objectives and tools. Pure logic: the
models it consults (an embedder, a JSON judge) come in as protocols, so all of it runs in unit tests."""
