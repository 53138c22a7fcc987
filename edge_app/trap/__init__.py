"""The trap runtime that runs on the Pi: hardware adapters, capture, detection, store and outbox,
links, settings, daemon and supervisor. Never imports station, tools or sim at module level."""
