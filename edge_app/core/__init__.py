"""What every deployable shares: events and ids, config types, clock, errors, topics, the LoRa
codec and the guarded parsers for untrusted input. Imports nothing else of camtrap."""
