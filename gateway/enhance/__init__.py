"""Enhancement: the worker process, routing rules, the QA gate, the derived objects and their report."""
