"""Offline environments: a simulated model pool and topics, scenarios, replay and evaluation."""
