"""orderstack: an order service and a product service settling stock over events."""
