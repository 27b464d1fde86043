"""The gateway's error hierarchy: one base class so the CLI can print a clean message and exit non-zero.

Why: an admin reading a message at 3 a.m. needs what was wrong and how to fix it, not a traceback.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file or an override is invalid; the message names the key and the fix."""


class StateError(GatewayError):
    """The state store refused an operation (unknown job, wrong state for the request)."""


class SpoolError(GatewayError):
    """A file could not be written to or read from the spool."""


class OutOfSpaceError(SpoolError):
    """Free disk under `var_dir` fell below the configured watermark; reception must refuse (0xA700)."""


class DeliveryError(GatewayError):
    """A destination refused or could not be reached; the sender retries with backoff."""
