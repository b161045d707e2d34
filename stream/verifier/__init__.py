"""The independent compliance verifier: its own reading of the contract's rule; imports nothing of the filter."""
