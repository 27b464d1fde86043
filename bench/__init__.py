"""Benchmarks of the gateway against trusted peers (dcmtk), each measured in the same run; never timed tests."""
