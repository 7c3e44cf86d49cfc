"""Messaging shared by both services: envelope codec, bus port and adapters, outbox, inbox."""
