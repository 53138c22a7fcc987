"""Laptop and workstation tools: eval, benchmarks, site adaptation, labelling, model and payload
tools. May import core, trap and station; nothing imports tools except the CLI."""
