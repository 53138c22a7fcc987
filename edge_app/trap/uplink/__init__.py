"""Links off the trap: MQTT (and later LoRaWAN)."""
