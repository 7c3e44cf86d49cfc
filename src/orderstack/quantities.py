"""Bounds of the quantities both services' domains and their events' payloads share.

Pure (no framework): the domains import it (``orders.domain``, ``products.domain``), and so
does the declaration of the events (``orderstack.events``), whose payload schemas state them.
"""

from __future__ import annotations

# The most units one order may ask for (POST /orders ``quantity``): an order is a
# customer's purchase, not a stock transfer; a larger figure is far more likely a mistake.
MAX_ORDER_QUANTITY = 1000

# The largest stock a product can hold (products.qty is a 32-bit INT).
MAX_QTY = 2_147_483_647

# Lines of one order, at most (POST /orders ``items``).
MAX_ORDER_LINES = 100

# Money is exact to the cent, DECIMAL(12, 2) in every database: the largest amount it holds.
MONEY_PRECISION = 12
MAX_MONEY_TEXT = "9999999999.99"
