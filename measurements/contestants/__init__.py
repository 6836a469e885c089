"""Contestants: one small adapter per queue implementation, all with one interface."""
