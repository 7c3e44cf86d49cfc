"""Storage shared by both services: engine from a URL, column types, unit of work, migrations."""
