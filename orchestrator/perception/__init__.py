"""Perception: hear and see the user, and describe their state in words the LLM can use."""
