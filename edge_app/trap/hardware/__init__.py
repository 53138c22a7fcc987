"""Hardware behind small interfaces: a real and a simulated implementation of each."""
