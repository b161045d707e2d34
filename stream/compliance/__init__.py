"""Compliance tools for privacy staff: answer for one item, one person, and the system as a whole."""
