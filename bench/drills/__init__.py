"""Fault drills: the gateway under SIGKILL, a destination that goes away, a full disk and hostile input.

Why a package of plain functions: the same drill runs as a small slow test in CI (`tests/drills/`) and at full
size from `bench/drills/report.py`, which prints one table of what was acknowledged, delivered, lost and
duplicated. Each drill returns a `DrillResult`; its `failures` list is empty when the gateway kept its
promises (nothing acknowledged is lost, nothing is duplicated, bad input gets a clear answer).
"""
