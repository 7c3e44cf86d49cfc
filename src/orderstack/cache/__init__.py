"""The product cache shared by both services: port, Redis adapter, in-process adapter."""
