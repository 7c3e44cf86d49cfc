"""The order service: orders, and their settlement by the product service's answers."""
