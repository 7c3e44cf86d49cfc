"""The project's test and measurement harness, kept out of the shipped package: throwaway
databases and vhosts on the real servers, service processes and stacks, the invariant
checks, the load generator, the benchmark (``make bench``) and the chaos run
(``make chaos``). It may import anything of ``orderstack``; ``orderstack`` imports
nothing of it."""
