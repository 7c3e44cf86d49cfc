"""The product service: products, their stock, and the stock taken for orders."""
