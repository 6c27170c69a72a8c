"""Configuration: the environment's settings and the stores file, one set of validators."""
