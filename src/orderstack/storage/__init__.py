"""Storage both services share: the engine for a URL (with its timeouts), what a database
error means (retry or not), column types, and running migrations. Imports only the
utilities: everything else stands on it."""
