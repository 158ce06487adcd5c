"""Reference systems (pure-JAX potentials, known minima) and labelling oracles."""
