"""Delivery: the sender (DIMSE, folder, STOW-RS destinations) with retry, backoff and circuit breaker."""
