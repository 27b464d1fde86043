"""Fault drills as slow tests: small versions of `bench/drills/` plus one focused test per defect they found."""
