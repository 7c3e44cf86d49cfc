"""Harness shared by the end-to-end tests, the chaos run and the benchmark: throwaway
databases and vhosts on the real servers, service processes, and the invariant checks."""
