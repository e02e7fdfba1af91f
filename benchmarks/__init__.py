"""Benchmarks for issue 7: event latency, calls per reconcile, cold start, resync at scale, memory.

Run with ``scripts/bench`` (``--quick`` for a smoke run). Not part of the pytest suite: pytest
collects ``tests/`` only. Everything runs on the real control plane (etcd + kube-apiserver) and
the Quay simulator with 250 ms of simulated CPU per OAuth-authenticated request. See README.md.
"""
