"""Model-side logic the Triton `model.py` files call: importable and unit-tested without a server."""
