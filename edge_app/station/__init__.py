"""The base station: the rangers' receiver, its store and LoRaWAN network-server ingest.
Never imports the trap runtime: it sees units only through what they send."""
