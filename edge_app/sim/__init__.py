"""The simulated world used by `camtrap demo`, `camtrap run` with backend sim, and tests."""
